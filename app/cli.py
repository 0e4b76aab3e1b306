"""The `edgetune` command."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgetune", description=__doc__)
    parser.add_argument("--version", action="version", version=version("edgetune"))
    parser.parse_args(argv)
    parser.print_help()
    return 0
