"""`edgetune data fetch NAME | --all [--into DIR]`: MNIST / Fashion-MNIST into a data root.

The download itself (checksums, atomic writes, timeouts) is app/fetch.py; this module picks the
folder from the settings and prints: progress on stderr, the outcome on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from app.config import Settings
from app.fetch import PUBLISHED, FetchError, Published, Stage, by_hand, choose_folder, fetch_dataset
from edgetune_cli.output import CliError, err, out

# A terminal's progress line is redrawn at most this often (a redraw per 64 KiB chunk would cost
# more than the download on a fast link).
REDRAW_SECONDS = 0.1


class Progress:
    """Bytes/size per file on stderr: one line redrawn on a terminal, one line per file if not."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.live = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, stage: Stage, published: Published, done: int) -> None:
        line = f"{self.name}/{published.file}  {done:,}/{published.size:,} bytes"
        if stage == "present":
            err.print(f"{line}  already there, checksum ok", highlight=False)
        elif stage == "done":
            if self.live:
                sys.stderr.write("\r\033[K")
            err.print(f"{line}  downloaded, checksum ok", highlight=False)
        elif self.live and time.monotonic() - self.last >= REDRAW_SECONDS:
            self.last = time.monotonic()
            sys.stderr.write(f"\r\033[K{line} ({100 * done // published.size} %)")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _folder(name: str, into: str | None, roots: list[Path]) -> tuple[Path, bool]:
    if into is None:
        return choose_folder(name, roots)
    folder = Path(into).expanduser() / name
    if not any(folder.resolve().is_relative_to(r.resolve()) for r in roots):
        err.print(
            f"note: {into} is not a data root; the service reads it with "
            f"EDGETUNE_DATA_ROOT={Path(into).expanduser().resolve()}",
            highlight=False,
        )
    return folder, False


def fetch_one(name: str, into: str | None, settings: Settings) -> None:
    folder, present = _folder(name, into, settings.data_roots)
    if present:
        out.print(f"{name}: verified files already in {folder}; nothing to download")
        return
    progress = Progress(name)
    try:
        downloaded = fetch_dataset(name, folder, settings.data_mirror, progress)
    except FetchError as exc:
        progress.clear()
        raise CliError(f"{name}: {exc}\n{by_hand(name, folder)}") from exc
    except KeyboardInterrupt:
        progress.clear()
        raise CliError(f"{name}: interrupted; no partial file was kept", 130) from None
    kept = len(PUBLISHED[name]) - len(downloaded)
    out.print(
        f"{name}: {len(downloaded)} downloaded, {kept} already there, all verified, in {folder}"
    )


def cmd_data(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        names = sorted(PUBLISHED) if args.all else [args.name]
        for name in names:
            fetch_one(name, args.into, settings)
    except FetchError as exc:  # no folder to fetch into
        raise CliError(str(exc)) from exc
    return 0
