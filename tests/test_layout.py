"""The code base's shape, checked: function length, and the import-layering contracts
(import-linter, configured in pyproject.toml), each shown to fail when broken."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker", "edgetune", "edgetune_cli")
MAX_FUNCTION_LINES = 80
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = [
        line
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for line in _long_functions(path)
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _contract_names() -> list[str]:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [c["name"] for c in config["tool"]["importlinter"]["contracts"]]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """The packages and the contracts, copied, so a breach can be written into them."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_layering_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in _contract_names():
        assert f"{name} KEPT" in result.stdout


BREACHES = {
    # The API reaches into the worker and torch.
    "app/_breach_worker.py": "import torch\n\nimport worker.main\n",
    # The client reaches into the API.
    "edgetune/_breach_app.py": "import app.config\n",
    # A cycle inside a package.
    "app/_breach_a.py": "import app._breach_b\n",
    "app/_breach_b.py": "import app._breach_a\n",
}
# Appended to existing modules: the science core reaches into the database and the growth law
# into torch; the client's schemas reach into torch.
APPENDED_BREACHES = (
    ("worker/fit.py", "\nimport torch  # noqa\n\nimport app.queue  # noqa\n"),
    ("edgetune/schemas.py", "\nimport torch  # noqa\n"),
    ("edgetune/client.py", "\nimport edgetune.inprocess  # noqa\n"),
)


def test_each_contract_fails_when_broken(copy: Path) -> None:
    for name, text in BREACHES.items():
        (copy / name).write_text(text)
    for path, line in APPENDED_BREACHES:
        with (copy / path).open("a") as f:
            f.write(line)
    result = _lint_imports(copy)
    assert result.returncode != 0
    for name in _contract_names():
        assert f"{name} BROKEN" in result.stdout, result.stdout


CLIENT = "The client imports neither the API nor the worker"
CLIENT_TORCH = "The client and the schemas never import torch"
CLIENT_WORKER = "The client and the schemas never reach the worker via edgetune.inprocess"
LAYERS = "The packages are layered without cycles (command line > worker > API > client)"


@pytest.mark.parametrize(
    ("path", "line", "broken"),
    [
        # Any other edgetune module importing the worker.
        ("edgetune/_breach_worker.py", "import worker.recommend\n", [CLIENT, LAYERS]),
        # The in-process module importing the worker beyond its three allowed modules.
        ("edgetune/inprocess.py", "\nimport worker.main  # noqa\n", [CLIENT, LAYERS]),
        # ... or the API directly.
        ("edgetune/inprocess.py", "\nimport app.queue  # noqa\n", [CLIENT, LAYERS]),
        # The client reaching the in-process module (and through it torch and the worker).
        (
            "edgetune/client.py",
            "\nimport edgetune.inprocess  # noqa\n",
            [CLIENT_TORCH, CLIENT_WORKER],
        ),
    ],
)
def test_only_the_in_process_module_may_import_the_worker(
    copy: Path, path: str, line: str, broken: list[str]
) -> None:
    with (copy / path).open("a") as f:
        f.write(line)
    result = _lint_imports(copy)
    assert result.returncode != 0
    for name in _contract_names():
        assert f"{name} {'BROKEN' if name in broken else 'KEPT'}" in result.stdout, result.stdout
