from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trustmap.atomic import write_atomic


def test_writes_whole_files_with_ordinary_permissions(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "sub" / "a.txt", lambda tmp: tmp.write_text("hello"))
    assert path.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
