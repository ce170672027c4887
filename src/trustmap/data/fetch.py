"""Download a dataset's official files, keeping only files whose size and MD5 match the record.

This is the only place trustmap downloads anything, and only when called. Each file streams
into a temporary file beside its final name, is verified, then renamed into place, so an
interrupted or corrupted download never leaves a file a loader could mistake for the real one.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from trustmap.atomic import write_atomic
from trustmap.data.sources import OfficialFile, default_data_root, source
from trustmap.errors import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(path: Path, spec: OfficialFile) -> str | None:
    """What is wrong with ``path`` as a copy of ``spec`` (size first, then MD5), or None."""
    size = path.stat().st_size
    if size != spec.size:
        return f"size {size:,} bytes, expected {spec.size:,}"
    if spec.md5 is not None:
        md5 = _md5_of(path)
        if md5 != spec.md5:
            return f"md5 {md5}, expected {spec.md5}"
    return None


def _download(spec: OfficialFile, final: Path, progress: bool) -> None:
    """Stream ``spec.url`` to a temporary file beside ``final``, verify it, rename it into place."""

    def write_verified(tmp: Path) -> None:
        with open(tmp, "wb") as out, \
                tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name,
                     disable=None if progress else True, leave=False) as bar:
            try:
                with urllib.request.urlopen(spec.url, timeout=_TIMEOUT_S) as response:
                    # Read at most one byte past the record: enough to tell "too long".
                    while (remaining := spec.size + 1 - out.tell()) > 0 \
                            and (chunk := response.read(min(_CHUNK, remaining))):
                        out.write(chunk)
                        bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as exc:
                raise DataError(f"could not download {spec.url} ({exc}); nothing was kept in "
                                f"{final.parent}. Check the connection and try again, or download "
                                f"the file by hand into {final.parent}") from exc
        problem = _mismatch(tmp, spec)
        if problem:
            raise DataError(f"{spec.url}: the downloaded {spec.name} has {problem}; it was deleted "
                            f"and nothing was kept in {final.parent}. Try again later; if it "
                            "persists, the mirror serves a different file than the official one")

    # write_atomic deletes the temporary file when write_verified raises.
    write_atomic(final, write_verified)


def fetch(name: str, dest_root: str | os.PathLike[str] | None = None, *, progress: bool = True,
          sources: Sequence[OfficialFile] | None = None) -> Path:
    """Download dataset ``name``'s official files into ``dest_root/name`` and return that folder.

    ``dest_root`` defaults to ``$TRUSTMAP_DATA`` or ``~/.cache/trustmap``, where the loaders
    look. Files already there that verify are not downloaded again. ``sources`` replaces the
    catalog's file list (name, URL, size, MD5), e.g. to use another mirror.
    """
    files = tuple(sources) if sources is not None else source(name).files
    dest = Path(dest_root).expanduser() if dest_root is not None else default_data_root()
    dest = dest / name
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest} for dataset {name!r} ({exc}); pass another "
                        "destination or set $TRUSTMAP_DATA to a writable directory") from exc
    for spec in files:
        final = dest / spec.name
        if final.is_file() and _mismatch(final, spec) is None:
            continue
        _download(spec, final, progress)
    return dest
