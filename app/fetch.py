"""`edgetune data fetch`: the one place the project downloads anything (no torch here).

MNIST and Fashion-MNIST come as their four original IDX `.gz` files, checked against the
published SHA-256 sums below. Each file is streamed into a temporary file in its destination
folder, hashed as it arrives, and renamed into place only once size and checksum match, so an
interrupted or corrupted download leaves neither a file nor a temporary file behind, and a reader
never sees a partial file (the rename is atomic within one file system). Files already there with
the right checksum are not downloaded again.

No network fails fast: a short connect timeout and one retry of the connection, then the caller
says where to put the files by hand (`by_hand`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import httpx

from app.datasets import IDX_FILES


@dataclass(frozen=True)
class Published:
    """One file as its authors publish it."""

    file: str
    size: int
    sha256: str


# From the official files (byte-identical copies in ../shared/datasets/*/SHA256SUMS).
PUBLISHED: dict[str, tuple[Published, ...]] = {
    "fashion-mnist": (
        Published(
            "train-images-idx3-ubyte.gz",
            26_421_880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        Published(
            "train-labels-idx1-ubyte.gz",
            29_515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        Published(
            "t10k-images-idx3-ubyte.gz",
            4_422_102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        Published(
            "t10k-labels-idx1-ubyte.gz",
            5_148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    "mnist": (
        Published(
            "train-images-idx3-ubyte.gz",
            9_912_422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        ),
        Published(
            "train-labels-idx1-ubyte.gz",
            28_881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        ),
        Published(
            "t10k-images-idx3-ubyte.gz",
            1_648_877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        ),
        Published(
            "t10k-labels-idx1-ubyte.gz",
            4_542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
    ),
}
assert all(tuple(p.file for p in files) == IDX_FILES for files in PUBLISHED.values())

# Where each dataset's authors publish it (EDGETUNE_DATA_MIRROR replaces these).
DEFAULT_MIRRORS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

# A connection that is not up within this many seconds is not coming (an offline machine or a
# firewall that drops packets); once the bytes flow, a stall of READ_SECONDS ends the download.
CONNECT_SECONDS = 4.0
READ_SECONDS = 30.0
CHUNK_BYTES = 1 << 16

Stage = Literal["present", "progress", "done"]
# (stage, file, bytes so far): "present" for a file already there and verified, "progress" as
# bytes arrive, "done" once a download is verified and in place.
Report = Callable[[Stage, Published, int], None]


class FetchError(Exception):
    """A download that could not be completed; nothing unverified was left behind."""


class MirrorUnreachable(FetchError):
    """No connection to the mirror (no network, a wrong host, a closed port)."""


def mirror_url(name: str, template: str = "") -> str:
    """The folder URL of `name`'s files: `template` with {name} replaced, else the default.

    A template without {name} is taken as the folder of the files themselves.
    """
    url = template.replace("{name}", name) if template else DEFAULT_MIRRORS[name]
    return url if url.endswith("/") else url + "/"


def is_verified(path: Path, published: Published) -> bool:
    """Whether `path` is the published file (size first: a wrong size costs no hashing)."""
    if not path.is_file() or path.stat().st_size != published.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == published.sha256


def _writable(folder: Path) -> bool:
    """Whether `folder` can be written, or created under its nearest existing parent."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def choose_folder(name: str, data_roots: list[Path]) -> tuple[Path, bool]:
    """The folder to fetch `name` into, and whether it already holds the verified files.

    The worker reads `<root>/<name>` of the first root where that folder exists, so that folder
    is the one to complete; with none, the first writable root gets it.
    """
    if not data_roots:
        raise FetchError("no data root is configured: set EDGETUNE_DATA_ROOT or pass --into DIR")
    existing = [root / name for root in data_roots if (root / name).is_dir()]
    if existing:
        folder = existing[0]
        if all(is_verified(folder / p.file, p) for p in PUBLISHED[name]):
            return folder, True
        if not _writable(folder):
            raise FetchError(
                f"{folder} is incomplete or does not match the published checksums, and it "
                "cannot be written; the worker reads it before any other data root, so complete "
                "it by hand or remove it"
            )
        return folder, False
    for root in data_roots:
        if _writable(root):
            return root / name, False
    roots = ", ".join(str(r) for r in data_roots)
    raise FetchError(f"no data root can be written ({roots}): pass --into DIR")


def fetch_dataset(name: str, folder: Path, mirror: str, report: Report) -> list[Published]:
    """Download `name`'s files into `folder` unless present; returns the files downloaded.

    Stops at the first failure (FetchError). Files verified before it stay: they are correct.
    """
    base = mirror_url(name, mirror)
    created = not folder.exists()
    downloaded = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        timeout = httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS)
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            for published in PUBLISHED[name]:
                if is_verified(folder / published.file, published):
                    report("present", published, published.size)
                    continue
                _download(client, base + published.file, folder, published, report)
                downloaded.append(published)
    except OSError as exc:
        raise FetchError(f"cannot write in {folder}: {exc}") from exc
    finally:
        # An empty folder of ours would shadow the same dataset in a later data root.
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return downloaded


def _open(client: httpx.Client, url: str) -> httpx.Response:
    """The streamed response to GET `url`; a failed connection is tried once more, not again."""
    try:
        request = client.build_request("GET", url, headers={"Accept-Encoding": "identity"})
    except httpx.InvalidURL as exc:
        raise FetchError(f"{url!r} is not a URL (EDGETUNE_DATA_MIRROR?): {exc}") from exc
    for attempt in (1, 2):
        try:
            return client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if attempt == 2:
                raise MirrorUnreachable(
                    f"cannot reach {url} ({exc or type(exc).__name__}): no network, or a mirror "
                    "this machine cannot reach"
                ) from exc
        except httpx.TransportError as exc:  # an unsupported scheme, a response that never came
            raise FetchError(f"cannot download {url}: {exc or type(exc).__name__}") from exc
    raise AssertionError("unreachable")


def _download(
    client: httpx.Client, url: str, folder: Path, published: Published, report: Report
) -> None:
    """Stream `url` into a temporary file beside its destination; rename it once verified."""
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{published.file}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            digest = _stream(client, url, fh, published, report)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name says they are
        if digest != published.sha256:
            raise FetchError(
                f"{url} does not match the published checksum: SHA-256 {digest}, expected "
                f"{published.sha256}; the file was refused and nothing was kept (a corrupt or "
                "altered mirror: try another with EDGETUNE_DATA_MIRROR)"
            )
        # mkstemp makes the file private (0600); a dataset is read by other users' workers too.
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, folder / published.file)
        report("done", published, published.size)
    finally:
        temp.unlink(missing_ok=True)


def _stream(
    client: httpx.Client, url: str, fh: IO[bytes], published: Published, report: Report
) -> str:
    """Write the body of `url` to `fh`; the SHA-256 of what arrived."""
    digest = hashlib.sha256()
    done = 0
    response = _open(client, url)
    try:
        if response.status_code != 200:
            raise FetchError(f"{url} answered HTTP {response.status_code}")
        length = response.headers.get("content-length")
        if length is not None and length != str(published.size):
            raise FetchError(
                f"{url} is {length} bytes, the published file {published.size:,}; refused"
            )
        # Raw bytes: a server that labels the .gz as Content-Encoding: gzip must not have it
        # decompressed here (the checksum is of the file as published).
        for chunk in response.iter_raw(CHUNK_BYTES):
            done += len(chunk)
            if done > published.size:
                raise FetchError(
                    f"{url} is larger than the published {published.size:,} bytes; refused"
                )
            digest.update(chunk)
            fh.write(chunk)
            report("progress", published, done)
    except httpx.TransportError as exc:
        raise FetchError(
            f"the download of {url} was interrupted after {done:,} of {published.size:,} bytes "
            f"({exc or type(exc).__name__}); nothing was kept"
        ) from exc
    finally:
        response.close()
    if done != published.size:
        raise FetchError(
            f"{url} sent {done:,} bytes, the published file has {published.size:,}; refused"
        )
    return digest.hexdigest()


def _umask() -> int:
    # Reading the umask means setting it; put back at once (a one-command process, no threads).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def by_hand(name: str, folder: Path) -> str:
    """How to install `name` without this command: which files go where."""
    lines = [f"To install {name} by hand, put these four files in {folder}/:"]
    lines += [f"  {p.file}  ({p.size:,} bytes, SHA-256 {p.sha256})" for p in PUBLISHED[name]]
    lines.append(
        "then run this command again to check them (it downloads nothing when they are there), "
        "or set EDGETUNE_DATA_MIRROR to a mirror you can reach ({name} is replaced by the "
        "dataset's name)."
    )
    return "\n".join(lines)
