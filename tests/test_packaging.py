"""The wheel, built and installed as a user would get it: it carries its migrations and its
command, and migrates a fresh SQLite database with nothing from the source checkout."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a wheel is built from; the rest of a checkout (venv, tests, benchmarks) is not needed.
SOURCES = ("pyproject.toml", "README.md", "app", "worker", "edgetune", "edgetune_cli")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the test venv's setuptools builds it, offline. Verbose, so the build
    # backend's own warnings are in the log the install test reads.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (dist / "build.log").write_text(done.stdout + done.stderr)
    (built,) = dist.glob("edgetune-*.whl")
    return built


def test_the_build_raises_no_packaging_warnings(wheel: Path) -> None:
    """Stumble 16: the install printed three setuptools license deprecation warnings (a TOML-table
    `license` and a license classifier). The build backend warns as `...Warning:` lines."""
    log = (wheel.parent / "build.log").read_text()
    assert "Created wheel for edgetune" in log
    warned = [line.strip() for line in log.splitlines() if re.search(r"[A-Z]\w*Warning:", line)]
    assert not warned, warned


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch venv holding the wheel; its dependencies come from this venv's site-packages
    (a .pth line), so nothing is downloaded and the checkout itself is not importable."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_the_wheel_ships_its_migrations(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "app/migrations/env.py" in names
    assert "app/migrations/script.py.mako" in names
    assert any(n.startswith("app/migrations/versions/") and n.endswith(".py") for n in names)
    assert "edgetune_cli/main.py" in names and "app/static/index.html" in names


def test_the_installed_command_migrates_a_fresh_sqlite_database(
    venv: Path, tmp_path: Path
) -> None:
    db = tmp_path / "fresh.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGETUNE_")}
    env |= {"EDGETUNE_DATABASE_URL": f"sqlite:///{db}", "EDGETUNE_DATA_DIR": str(tmp_path)}
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import app.db; print(app.db.migrations_dir())"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout's
    up = subprocess.run(
        [str(venv / "bin" / "edgetune"), "db", "upgrade"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert up.returncode == 0, up.stderr
    assert "(head)" in up.stdout
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"jobs", "probes", "alembic_version"} <= tables


def test_the_slim_install_is_a_client_without_the_server_stack(
    wheel: Path, tmp_path: Path
) -> None:
    """`pip install edgetune` (no extras) into a fresh venv: httpx, pydantic and PyYAML from the
    package index, no fastapi or sqlalchemy, and the client talks to a running server."""
    from app.config import Settings
    from app.db import upgrade
    from tests.helpers import SMALL_SPEC, api_key, live_server

    root = tmp_path / "slim"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = str(root / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'slim.db'}", data_dir=tmp_path, data_root=str(tmp_path)
    )
    upgrade(settings)
    key = api_key(settings)["X-API-Key"]
    script = (
        "import importlib.util, sys\n"
        "from edgetune import Client\n"
        "present = [m for m in ('fastapi', 'sqlalchemy', 'alembic', 'uvicorn', 'torch')"
        " if importlib.util.find_spec(m) is not None]\n"
        "assert not present, present  # the server stack came along\n"
        "import edgetune\n"
        "try:\n"
        "    edgetune.build_model(" + repr(SMALL_SPEC) + ")\n"
        "except ImportError as exc:\n"
        "    assert 'pip install torch' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('build_model ran without torch')\n"
        "with Client(sys.argv[1], api_key=sys.argv[2]) as client:\n"
        "    job = client.submit(" + repr(SMALL_SPEC) + ")\n"
        "    print(client.job(job.id).status)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGETUNE_")}
    with live_server(settings) as url:
        done = subprocess.run(
            [python, "-c", script, url, key], cwd=tmp_path, env=env, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "queued"
    # The command needs the server's packages, and says which extra brings them.
    command = subprocess.run(
        [str(root / "bin" / "edgetune"), "--help"], env=env, capture_output=True, text=True
    )
    assert command.returncode == 1 and "pip install 'edgetune[server]'" in command.stderr
