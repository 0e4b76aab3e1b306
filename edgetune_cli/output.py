"""What every command shares: the consoles and the one error a command raises."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console
from rich.text import Text

# soft_wrap: long messages and URLs stay on one line (copy-pasteable), whatever the width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
if not out.is_terminal:
    # A pipe or a file: tables as wide as their content, so ids and prefixes are never cut.
    out.width = 1000


class CliError(Exception):
    """A failure the user can act on: printed as one message, exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int) -> NoReturn:
    # Text, not markup: a server's message may contain [brackets].
    err.print(Text.assemble(("error: ", "bold red"), message))
    raise SystemExit(code)
