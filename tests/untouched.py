"""What the bad-input tests (``tests/fuzz/``) assert after every refused call: no file appeared,
disappeared or changed. A folder a refused command touched could refuse the corrected one."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime) of every entry under ``root``, symlinks not followed; only the mode
    of a directory, whose mtime a temporary file created and removed again also changes."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                os.lstat(os.path.join(folder, name)).st_mode, 0, 0)
        for name in files:
            status = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (
                status.st_mode, status.st_size, status.st_mtime_ns)
    return found
