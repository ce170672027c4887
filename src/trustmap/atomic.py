"""Write files so that a reader never sees half of one: temporary name, then rename."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trustmap.errors import ConfigError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read the process umask (the only way is to set it and put it back)


def _temporary(path: Path) -> Path:
    """A new empty file beside ``path``, named so that ``is_temporary`` knows it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp",
                               dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    return Path(tmp)


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    If ``write`` fails, the temporary file is removed and any earlier ``path`` is untouched.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temporary_folder(directory: Path, prefix: str) -> Path:
    """A new hidden folder in ``directory`` for files that move elsewhere once all are
    written; named like a temporary file, so a killed command's folder is cleaned up too."""
    return Path(tempfile.mkdtemp(prefix=f".{prefix}", suffix=".tmp", dir=directory))


class Outputs:
    """Files that belong together (a report, its metrics, its table): ``write`` puts each in a
    temporary file beside its place, and ``together``'s end renames them all into place, one
    rename after the other with nothing computed between them. A failure before then removes
    the temporaries and leaves every earlier file as it was, so a new table never stands
    beside an old report."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, path: Path | str, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` now; ``path`` itself changes at the end of ``together``."""
        path = Path(path)
        tmp = _temporary(path)
        self._staged.append((tmp, path))
        write(tmp)
        return path

    def _publish(self) -> None:
        for tmp, path in self._staged:
            os.replace(tmp, path)
        self._staged.clear()

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextmanager
def together() -> Iterator[Outputs]:
    """An ``Outputs`` whose files all replace the earlier ones at the end of the block, or none
    of them does if the block raises."""
    outputs = Outputs()
    try:
        yield outputs
    except BaseException:
        outputs._discard()
        raise
    outputs._publish()


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named like a temporary file or folder of this module."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale_temporaries(directory: Path | str, recursive: bool = False) -> list[Path]:
    """Delete the temporary files and folders a killed command left in ``directory``; return
    them.

    Call it only where no other trustmap process writes at the same time (the start of a
    command that owns the directory): a live write's temporary file looks the same.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    removed = [path for path in found if not path.is_symlink()
               and (path.is_file() or path.is_dir())]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def check_writable(path: Path | str, folder: bool) -> None:
    """ConfigError unless ``path`` can be written as a folder (``folder``) or as a file.

    Called before anything is written, so that a command refused for its output path leaves
    nothing behind: the path must not be the other kind, no parent may be a file, and the
    nearest existing folder must be writable.
    """
    path = Path(path)
    if path.exists():
        if path.is_dir() != folder:
            kind, wanted = ("a file", "folder") if folder else ("a folder", "file")
            raise ConfigError(f"{path} is {kind}; give the path of a {wanted} instead")
        home = path if folder else path.parent
    else:
        home = path.parent
        while not home.exists():
            home = home.parent
        if not home.is_dir():
            raise ConfigError(f"cannot write {path}: {home} is a file, not a folder; "
                              "choose another path")
    if not os.access(home, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {home} is not writable for this user; "
                          "choose another path")
