"""fetch() against a local HTTP server: verified files land atomically, bad ones leave nothing."""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from trustmap.data import fetch, load
from trustmap.data.sources import OfficialFile
from trustmap.errors import DataError


class _Server:
    """Files under ``root`` served on 127.0.0.1, with every requested path recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                         functools.partial(Handler, directory=str(root)))
        self.httpd.timeout = 5
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def spec(self, name: str, content: bytes | None = None, **override) -> OfficialFile:
        """The record of a served file; ``content`` (if given) is written and described."""
        if content is not None:
            (self.root / name).write_bytes(content)
        data = (self.root / name).read_bytes()
        record = {"name": name, "url": f"http://127.0.0.1:{self.httpd.server_port}/{name}",
                  "size": len(data), "md5": hashlib.md5(data).hexdigest()}
        return OfficialFile(**{**record, **override})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    (tmp_path / "served").mkdir()
    running = _Server(tmp_path / "served")
    yield running
    running.close()


def listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_fetch_downloads_verifies_and_is_idempotent(server: _Server, tmp_path: Path) -> None:
    specs = [server.spec("a.bin", b"alpha" * 1000), server.spec("b.bin", bytes(range(256)) * 9000)]
    dest = fetch("mnist", tmp_path / "cache", progress=False, sources=specs)
    assert dest == tmp_path / "cache" / "mnist"
    assert listing(dest) == ["a.bin", "b.bin"]  # and no temporary file left
    assert (dest / "b.bin").read_bytes() == bytes(range(256)) * 9000
    assert len(server.requests) == 2

    assert fetch("mnist", tmp_path / "cache", progress=False, sources=specs) == dest
    assert len(server.requests) == 2  # verified files are not downloaded again

    (dest / "a.bin").write_bytes(b"damaged")  # a damaged copy is replaced
    fetch("mnist", tmp_path / "cache", progress=False, sources=specs)
    assert server.requests[2:] == ["/a.bin"]
    assert (dest / "a.bin").read_bytes() == b"alpha" * 1000


def test_checksum_mismatch_keeps_nothing(server: _Server, tmp_path: Path) -> None:
    good = server.spec("good.bin", b"good" * 100)
    dest = fetch("svhn", tmp_path / "cache", progress=False, sources=[good])
    bad = server.spec("bad.bin", b"evil" * 100, md5="0" * 32)
    with pytest.raises(DataError, match="md5 .* expected 0{32}") as info:
        fetch("svhn", tmp_path / "cache", progress=False, sources=[good, bad])
    assert "nothing was kept" in str(info.value)
    assert listing(dest) == ["good.bin"]  # the verified file is kept, no temporary file left
    assert (dest / "good.bin").read_bytes() == b"good" * 100


@pytest.mark.parametrize("size_change", [-1, +1])
def test_size_mismatch_keeps_nothing(server: _Server, tmp_path: Path, size_change: int) -> None:
    spec = server.spec("x.bin", b"x" * 500)
    spec = OfficialFile(spec.name, spec.url, spec.size + size_change, None)
    with pytest.raises(DataError, match=f"expected {500 + size_change}"):
        fetch("cifar10", tmp_path / "cache", progress=False, sources=[spec])
    assert listing(tmp_path / "cache" / "cifar10") == []


def test_missing_url_is_a_data_error(server: _Server, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{server.httpd.server_port}/gone.bin"
    spec = OfficialFile("gone.bin", url, 10, None)
    with pytest.raises(DataError, match="could not download .*gone.bin.*404"):
        fetch("kmnist", tmp_path / "cache", progress=False, sources=[spec])
    assert listing(tmp_path / "cache" / "kmnist") == []


def test_fetched_files_are_found_by_load(server: _Server, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetch into the default destination ($TRUSTMAP_DATA), then load finds it there."""
    monkeypatch.setenv("TRUSTMAP_DATA", str(tmp_path / "data"))
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    specs = []
    for name, magic, array in (("t10k-images-idx3-ubyte.gz", 3, images),
                               ("t10k-labels-idx1-ubyte.gz", 1, np.array([3, 1, 4], np.uint8))):
        header = bytes([0, 0, 8, magic]) + np.asarray(array.shape, ">i4").tobytes()
        specs.append(server.spec(name, gzip.compress(header + array.tobytes())))
    assert fetch("kmnist", progress=False, sources=specs) == tmp_path / "data" / "kmnist"
    ds = load("kmnist", "test")
    assert ds.labels.tolist() == [3, 1, 4]
    assert np.array_equal((ds.images[:, 0] * 255).round().byte().numpy(), images)
    assert ds.classes[:3] == ("o", "ki", "su")
