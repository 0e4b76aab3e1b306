"""The README's notebook example (in-process recommendation, then training under the monitor)
runs as written: extracted from README.md and run in a fresh interpreter, as a user pastes it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def notebook_snippet() -> str:
    section = REPO.joinpath("README.md").read_text().split("## In a notebook", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's notebook section has no python example"
    return match.group(1)


def test_the_notebook_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(notebook_snippet())
    done = subprocess.run(
        [sys.executable, "-W", "always::UserWarning", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(("use it", "use with care", "don't"))
    assert "learning_rate=" in lines[1] and "schedule=" in lines[1]
    # The monitor measured the run from step 0 on, and J² grew while it trained.
    start, end = (float(v) for v in re.findall(r"[\d.]+", lines[-1].split("J²")[1]))
    assert end > start
