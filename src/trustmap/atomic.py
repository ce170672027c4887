"""Write files so that a reader never sees half of one: temporary name, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)  # read the process umask (the only way is to set it and put it back)


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    If ``write`` fails, the temporary file is removed and any earlier ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp",
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named like a temporary file of ``write_atomic``."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale_temporaries(directory: Path | str, recursive: bool = False) -> list[Path]:
    """Delete the temporary files a killed ``write_atomic`` left in ``directory``; return them.

    Call it only where no other trustmap process writes at the same time (the start of a
    command that owns the directory): a live write's temporary file looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = [path for path in found if path.is_file() and not path.is_symlink()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
