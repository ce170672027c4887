"""Download a dataset's official files, keeping only files whose size and MD5 match the record.

This is the only place trustmap downloads anything, and only when called. Each file streams
into a temporary file beside its final name, is verified, then renamed into place, so an
interrupted or corrupted download never leaves a file a loader could mistake for the real one.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from trustmap.atomic import write_atomic
from trustmap.data.sources import OfficialFile, default_data_root, source
from trustmap.errors import DataError

_CHUNK = 1 << 20
_TIMEOUT_S = 60
# What a failing connection raises (URLError and timeouts are OSErrors; a cut-off body
# is an http.client.IncompleteRead; a malformed URL in ``sources`` is a ValueError).
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


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


def _download_error(spec: OfficialFile, final: Path, exc: Exception) -> DataError:
    """The error for a failed connection (the temporary file is removed by write_atomic)."""
    return DataError(f"could not download {spec.url} ({exc}); nothing was kept in {final.parent}. "
                     "Check the connection and try again, or download the file by hand into "
                     f"{final.parent}")


def _write_verified(spec: OfficialFile, final: Path, progress: bool, damaged: str | None,
                    tmp: Path) -> None:
    """Stream ``spec.url`` into ``tmp`` and verify it; DataError if the download fails or differs.

    Errors of the connection become a DataError here; errors of writing ``tmp`` (a full disk)
    stay OSErrors for ``fetch`` to report as such.
    """
    with open(tmp, "wb") as out, \
            tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.name,
                 disable=None if progress else True, leave=False) as bar:
        try:
            response = urllib.request.urlopen(spec.url, timeout=_TIMEOUT_S)
        except _NETWORK_ERRORS as exc:
            raise _download_error(spec, final, exc) from exc
        with response:
            # Read at most one byte past the record: enough to tell "too long".
            while (remaining := spec.size + 1 - out.tell()) > 0:
                try:
                    chunk = response.read(min(_CHUNK, remaining))
                except _NETWORK_ERRORS as exc:
                    raise _download_error(spec, final, exc) from exc
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
    problem = _mismatch(tmp, spec)
    if problem:
        earlier = (f" The copy already at {final} does not verify either ({damaged}): delete it."
                   if damaged else "")
        raise DataError(f"{spec.url}: the downloaded {spec.name} has {problem}; it was deleted "
                        f"and nothing was kept in {final.parent}. Try again later; if it "
                        f"persists, the mirror serves a different file than the official one."
                        f"{earlier}")


def fetch(name: str, dest_root: str | os.PathLike[str] | None = None, *, progress: bool = True,
          sources: Sequence[OfficialFile] | None = None) -> Path:
    """Download dataset ``name``'s official files into ``dest_root/name`` and return that folder.

    ``dest_root`` defaults to ``$TRUSTMAP_DATA`` or ``~/.cache/trustmap``, where the loaders
    look. Files already there that verify are not downloaded again. ``sources`` replaces the
    catalog's file list (name, URL, size, MD5), e.g. to use another mirror. Each file is
    written by ``write_atomic``: a failed download leaves whatever was at its name untouched.
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
        damaged = _mismatch(final, spec) if final.is_file() else None
        if final.is_file() and damaged is None:
            continue
        try:
            write_atomic(final, functools.partial(_write_verified, spec, final, progress,
                                                  damaged))
        except OSError as exc:
            raise DataError(f"cannot write {final} ({exc}); nothing was kept there. Remove "
                            f"whatever is in the way at that path, free disk space or make "
                            f"{final.parent} writable, then run `trustmap data fetch {name}` "
                            "again") from exc
    return dest
