from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trustmap.atomic import (
    check_writable,
    is_temporary,
    remove_stale_temporaries,
    temporary_folder,
    together,
    write_atomic,
)
from trustmap.errors import ConfigError


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


def test_outputs_replace_the_earlier_files_all_together(tmp_path: Path) -> None:
    for name in ("report.html", "metrics.json"):
        (tmp_path / name).write_text("old")
    with together() as outputs:
        outputs.write(tmp_path / "report.html", lambda tmp: tmp.write_text("new"))
        outputs.write(tmp_path / "metrics.json", lambda tmp: tmp.write_text("new"))
        outputs.write(tmp_path / "table.parquet", lambda tmp: tmp.write_text("new"))
        # nothing has changed while the block runs: the new files wait under temporary names
        assert (tmp_path / "report.html").read_text() == "old"
        assert not (tmp_path / "table.parquet").exists()
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "report.html": "new", "metrics.json": "new", "table.parquet": "new"}


def test_outputs_of_a_failed_block_change_nothing_and_leave_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), together() as outputs:
        outputs.write(tmp_path / "per_sample.parquet", lambda tmp: tmp.write_text("new"))
        outputs.write(tmp_path / "report.html", broken)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert (tmp_path / "report.html").read_text() == "old"


def test_stale_temporaries_are_removed_files_and_folders_alike(tmp_path: Path) -> None:
    (tmp_path / "report.html").write_text("kept")
    (tmp_path / ".report.x1.html.tmp").write_text("half")
    staging = temporary_folder(tmp_path, "figures-")
    (staging / "01-roc.png").write_bytes(b"png")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ".run.x2.json.tmp").write_text("half")
    assert all(is_temporary(p) for p in (staging, tmp_path / ".report.x1.html.tmp"))
    assert len(remove_stale_temporaries(tmp_path)) == 2  # not into results/ unless recursive
    assert (tmp_path / "results" / ".run.x2.json.tmp").exists()
    removed = remove_stale_temporaries(tmp_path, recursive=True)
    assert [p.name for p in removed] == [".run.x2.json.tmp"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "report.html", "results"]


@pytest.mark.parametrize("make, folder, message", [
    (lambda p: p.write_text("x"), True, "is a file; give the path of a folder"),
    (lambda p: p.mkdir(), False, "is a folder; give the path of a file"),
    (lambda p: p.parent.joinpath("parent").write_text("x"), True, "is a file, not a folder"),
])
def test_check_writable_names_what_is_in_the_way(tmp_path: Path, make, folder: bool,
                                                 message: str) -> None:
    path = tmp_path / "out"
    make(path)
    target = tmp_path / "parent" / "run" if "not a folder" in message else path
    with pytest.raises(ConfigError, match=message):
        check_writable(target, folder=folder)
