"""What the README and docs/ cite is in the repository (issue 11, stumble 11: the README cited a
science.md that was not there). Links, repository paths in backticks and the benchmark files
named by their bare names must all resolve in a checkout."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOP = ("app", "worker", "edgetune", "edgetune_cli", "benchmarks", "docs", "examples", "tests",
       "deploy", "scripts")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE = re.compile(r"`([^`\s]+)`")
REPO_PATH = re.compile(rf"^(?:{'|'.join(TOP)})/[\w./-]*$")
BARE_FILE = re.compile(r"^[\w-]+\.(?:md|py|json|yaml|png)$")


def cited(doc: Path) -> set[str]:
    text = doc.read_text(encoding="utf-8")
    links = {m for m in LINK.findall(text) if not re.match(r"^[a-z]+:", m)}
    code = {m for m in CODE.findall(text) if REPO_PATH.match(m) or BARE_FILE.match(m)}
    return links | code


def resolves(doc: Path, name: str) -> bool:
    if (doc.parent / name).exists() or (REPO / name).exists():
        return True
    # A bare benchmark name (`suite.py`, `soak.json`) is a file somewhere in the repository.
    return bool(BARE_FILE.match(name)) and any(
        p.name == name for p in REPO.rglob(name) if ".venv" not in p.parts
    )


def test_docs_cite_only_what_the_repository_holds() -> None:
    assert (REPO / "docs" / "science.md").is_file()
    missing = [(d.name, n) for d in DOCS for n in sorted(cited(d)) if not resolves(d, n)]
    assert not missing, missing


def test_the_check_sees_the_citations() -> None:
    """The patterns find the README's science.md links and its module table."""
    readme = cited(REPO / "README.md")
    assert "docs/science.md" in readme and "worker/law.py" in readme
    assert not resolves(REPO / "README.md", "science-notes.md")
