"""The Docker files, checked without a Docker engine: the compose graph (postgres → migrate →
api, worker), and that every command the images run is one this code base really has — the CLI
commands answer `--help` through the real entry point, and the API image's command serves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from app.config import Settings
from app.db import upgrade
from tests.helpers import api_key

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = [("FROM", match.group(1))]
            stages[match.group(2)] = current
        else:
            current.append((instruction, args.strip()))
    return stages


def stage_lines(stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """A stage's instructions including those of the stages it builds on."""
    lines = stages[name]
    parent = lines[0][1]
    return (stage_lines(stages, parent) if parent in stages else []) + lines


def exec_form(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list), "CMD in exec (JSON) form, so signals reach the process"
    return command


def image_command(target: str) -> list[str]:
    cmds = [args for inst, args in stage_lines(dockerfile_stages(), target) if inst == "CMD"]
    return exec_form(cmds[-1])


def test_compose_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "migrate", "api", "worker"}
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["edgetune", "db", "upgrade"]
    assert services["migrate"].get("restart", "no") == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }


def test_compose_points_everyone_at_the_postgres_service() -> None:
    services = compose()["services"]
    env = services["postgres"]["environment"]
    expected = (
        f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{env['POSTGRES_DB']}"
    )
    for name in ("migrate", "api", "worker"):
        assert services[name]["environment"]["EDGETUNE_DATABASE_URL"] == expected
        assert services[name]["environment"]["EDGETUNE_DATA_ROOT"] == "/data"
    # The API checks that a spec's files exist before queueing it, so it sees the data too.
    for name in ("api", "worker"):
        assert any(v.endswith(":/data:ro") for v in services[name]["volumes"])


def test_compose_builds_the_dockerfile_targets_and_runs_their_commands() -> None:
    services = compose()["services"]
    stages = dockerfile_stages()
    assert services["migrate"]["build"]["target"] == "api"  # migrating needs no torch
    for name in ("api", "worker"):
        assert services[name]["build"] == {"context": ".", "target": name}
        assert name in stages
        assert services[name]["command"] == image_command(name)


def test_api_image_has_no_torch_and_worker_image_has_it() -> None:
    stages = dockerfile_stages()
    api_runs = " ".join(args for inst, args in stage_lines(stages, "api") if inst == "RUN")
    worker_runs = " ".join(args for inst, args in stage_lines(stages, "worker") if inst == "RUN")
    assert "pip install -e '.[server]'" in api_runs
    assert "[worker]" not in api_runs and "torch" not in api_runs
    assert "pip install -e '.[worker]'" in worker_runs


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    stages = dockerfile_stages()
    ignored = (REPO / ".dockerignore").read_text().split()
    for name in stages:
        for inst, args in stages[name]:
            if inst == "COPY":
                *sources, _ = args.split()
                for source in sources:
                    assert (REPO / source).exists(), source
                    assert source not in ignored
    assert ".venv" in ignored and ".git" in ignored


def test_every_cli_command_in_the_docker_files_exists() -> None:
    edgetune = shutil.which("edgetune", path=str(BIN)) or shutil.which("edgetune")
    assert edgetune, "the edgetune console script is installed"
    services = compose()["services"]
    commands = [image_command("worker"), services["migrate"]["command"]]
    commands += [s["command"] for s in services.values() if "command" in s]
    for command in commands:
        if command[0] != "edgetune":
            continue
        # Options stop at the first flag; `edgetune worker --help` etc. must succeed.
        words = [w for w in command[1:] if not w.startswith("-")]
        result = subprocess.run(
            [edgetune, *words, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stderr)
        assert "usage: edgetune" in result.stdout


def test_the_api_image_command_serves(tmp_path: Path) -> None:
    """Run the api target's CMD as written (host and port aside) against a migrated database."""
    command = image_command("api")
    assert command[:2] == ["uvicorn", "--factory"]
    database = f"sqlite:///{tmp_path / 'edgetune.db'}"
    settings = Settings(database_url=database, data_dir=tmp_path)
    upgrade(settings)
    key = api_key(settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = list(command)
    args[0] = shutil.which(command[0], path=str(BIN)) or command[0]  # the installed script
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    env = {
        **os.environ,
        "EDGETUNE_DATABASE_URL": database,
        "EDGETUNE_DATA_DIR": str(tmp_path),
        "EDGETUNE_DATA_ROOT": str(tmp_path),
    }
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"{shlex.join(command)} exited: {proc.stderr.read()}"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{shlex.join(command)} did not serve within 30 s")
                time.sleep(0.2)
        assert response.status_code == 200
        # An explicit database means keys are required.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers=key).json()["jobs"] == []
        # What uvicorn's own HTTP parser refuses is a problem too (app.main.ProblemHttpProtocol).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Length: abc\r\n\r\n")
            reply = conn.recv(65_536)  # one write, then the server closes the connection
        assert reply.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in reply
    finally:
        proc.terminate()
        proc.wait(timeout=30)
