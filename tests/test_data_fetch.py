"""`edgetune data fetch` through the real command, against a mirror on 127.0.0.1 (http.server in
a thread) that serves copies of the shared MNIST files: a fetch the worker's loader then reads, a
second fetch that downloads nothing, corrupted and cut-off files refused with nothing left behind,
and an unreachable mirror that fails fast with the by-hand instructions."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.datasets import IDX_FILES
from app.fetch import PUBLISHED
from edgetune.schemas import DatasetSpec
from worker.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
EDGETUNE = str(Path(sys.executable).with_name("edgetune"))
PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


class MirrorHandler(SimpleHTTPRequestHandler):
    """Static files; under /cut/ each file's headers promise all of it, then half is sent."""

    def do_GET(self) -> None:
        if not self.path.startswith("/cut/"):
            super().do_GET()
            return
        body = Path(self.translate_path(self.path.removeprefix("/cut"))).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a mirror serving mnist/ (good copies), bad-images/ (one byte of the
    training images flipped), bad-labels/ (the last file truncated) and cut/mnist/."""
    source = data_root / "mnist"
    if not all((source / f).is_file() for f in IDX_FILES):
        pytest.skip(f"{source} is not there (set EDGETUNE_DATA_ROOT)")
    served = tmp_path_factory.mktemp("mirror")
    for name in ("mnist", "bad-images", "bad-labels"):
        folder = served / name
        folder.mkdir()
        for file in IDX_FILES:  # copies: the shared files are never written
            shutil.copyfile(source / file, folder / file)
    images = served / "bad-images" / "train-images-idx3-ubyte.gz"
    raw = bytearray(images.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    images.write_bytes(bytes(raw))
    labels = served / "bad-labels" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(MirrorHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fetch(*args: str, root: Path, mirror: str) -> subprocess.CompletedProcess[str]:
    # No proxy: the mirror is on this machine.
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env |= {"EDGETUNE_DATA_ROOT": str(root), "EDGETUNE_DATA_MIRROR": mirror}
    return subprocess.run(
        [EDGETUNE, "data", "fetch", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fetch_then_the_worker_loads_it(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "data"
    result = fetch("mnist", root=root, mirror=mirror + "/{name}/")
    assert result.returncode == 0, result.stderr
    assert f"mnist: 4 downloaded, 0 already there, all verified, in {root / 'mnist'}" in (
        result.stdout
    )
    for published in PUBLISHED["mnist"]:  # progress: bytes/size, on stderr
        assert f"{published.file}  {published.size:,}/{published.size:,} bytes" in result.stderr
    assert files_under(root) == sorted(f"mnist/{f}" for f in IDX_FILES)  # no temporary files
    assert all((root / "mnist" / f).stat().st_mode & 0o044 for f in IDX_FILES)  # others may read

    dataset = load_dataset(DatasetSpec(name="mnist"), [root])
    assert dataset.train_size + len(dataset.x_val) == 60_000
    assert tuple(dataset.x_test.shape) == (10_000, 1, 28, 28)
    assert dataset.num_classes == 10


def test_a_second_fetch_skips_verified_files_and_replaces_others(
    tmp_path: Path, mirror: str
) -> None:
    root = tmp_path / "data"
    assert fetch("mnist", root=root, mirror=mirror + "/{name}").returncode == 0
    folder = root / "mnist"
    stamps = {f: (folder / f).stat().st_mtime_ns for f in IDX_FILES}

    again = fetch("mnist", root=root, mirror=mirror + "/{name}")
    assert again.returncode == 0, again.stderr
    assert f"mnist: verified files already in {folder}; nothing to download" in again.stdout
    assert {f: (folder / f).stat().st_mtime_ns for f in IDX_FILES} == stamps

    # One file missing and one altered: those two are fetched, the other two are kept.
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
    third = fetch("mnist", root=root, mirror=mirror + "/{name}")
    assert third.returncode == 0, third.stderr
    assert "mnist: 2 downloaded, 2 already there, all verified" in third.stdout
    assert "train-images-idx3-ubyte.gz  9,912,422/9,912,422 bytes  already there" in third.stderr
    for f in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (folder / f).stat().st_mtime_ns == stamps[f]
    assert files_under(root) == sorted(f"mnist/{f}" for f in IDX_FILES)


def test_a_corrupted_file_is_refused_and_leaves_nothing(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "data"
    # A URL without {name} is the folder of the files themselves.
    result = fetch("mnist", root=root, mirror=mirror + "/bad-images/")
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz does not match the published checksum" in result.stderr
    assert "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609" in result.stderr
    assert "nothing was kept" in result.stderr
    # The first file was the bad one: not even the (empty) folder is left, which would hide the
    # dataset in a later data root from the worker.
    assert not root.exists() or files_under(root) == []
    assert not (root / "mnist").exists()

    # A short last file: refused, the three verified files before it stay.
    short = fetch("mnist", root=root, mirror=mirror + "/bad-labels")
    assert short.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz is 4442 bytes, the published file 4,542; refused" in (
        short.stderr
    )
    assert files_under(root) == sorted(f"mnist/{f}" for f in IDX_FILES[:3])
    assert "To install mnist by hand, put these four files in" in short.stderr


def test_an_interrupted_download_leaves_no_partial_file(tmp_path: Path, mirror: str) -> None:
    root = tmp_path / "data"
    result = fetch("mnist", root=root, mirror=mirror + "/cut/{name}")
    assert result.returncode == 1
    assert "the download of" in result.stderr and "was interrupted after" in result.stderr
    assert not (root / "mnist").exists()


def test_an_unreachable_mirror_fails_fast_with_the_by_hand_instructions(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "data"
    started = time.monotonic()
    result = fetch("mnist", root=root, mirror=f"http://127.0.0.1:{port}/{{name}}")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert f"cannot reach http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz" in (
        result.stderr
    )
    assert f"put these four files in {root / 'mnist'}/" in result.stderr
    for published in PUBLISHED["mnist"]:
        assert f"{published.file}  ({published.size:,} bytes, SHA-256 {published.sha256})" in (
            result.stderr
        )
    assert not (root / "mnist").exists()


def test_with_no_data_root_configured_the_data_dir_holds_the_datasets(tmp_path: Path) -> None:
    """A fresh machine: no EDGETUNE_DATA_ROOT and no ../shared. `<data_dir>/datasets` is always
    a data root, so what `edgetune data fetch` puts there is what the API and the worker read."""
    from app.config import Settings

    roots = Settings(data_dir=tmp_path, data_root="").data_roots
    assert roots[-1] == (tmp_path / "datasets").resolve()
    explicit = Settings(data_dir=tmp_path, data_root=str(tmp_path / "mine")).data_roots
    assert explicit == [tmp_path / "mine"]  # an explicit root is the only one
