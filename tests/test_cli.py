"""The `edgetune` command through its real entry point: db commands on both databases, and
recommend/jobs against a live `edgetune serve` (embedded SQLite, API + worker in one process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from app.config import Settings

REPO = Path(__file__).resolve().parents[1]
EDGETUNE = str(Path(sys.executable).with_name("edgetune"))
DIGITS = REPO / "examples" / "digits_small.yaml"


def edgetune(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGETUNE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "EDGETUNE_DATABASE_URL": settings.database_url}


def test_db_downgrade_current_upgrade(db_settings: Settings) -> None:
    env = env_for(db_settings)
    current = edgetune("db", "current", env=env)
    assert current.returncode == 0 and "revision 0003 (head)" in current.stdout

    down = edgetune("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert "revision (none)" in down.stdout and "run `edgetune db upgrade`" in down.stdout

    up = edgetune("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    assert "revision 0003 (head)" in up.stdout


def test_worker_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {**os.environ, "EDGETUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    result = edgetune("worker", "--once", env=env)
    assert result.returncode == 1
    assert "run `edgetune db upgrade`" in result.stderr


def test_server_down_is_a_clear_error() -> None:
    port = free_port()
    result = edgetune("jobs", "list", "--url", f"http://127.0.0.1:{port}", env=dict(os.environ))
    assert result.returncode == 2
    assert "cannot reach the edgetune server" in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """`edgetune serve` on a free port with a fresh embedded database; stopped with SIGINT."""
    data_dir = tmp_path_factory.mktemp("serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "EDGETUNE_DATA_DIR": str(data_dir),
        "EDGETUNE_PORT": str(port),
        "EDGETUNE_POLL_SECONDS": "0.2",
        "EDGETUNE_URL": url,
    }
    env.pop("EDGETUNE_DATABASE_URL", None)
    log = open(data_dir / "serve.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([EDGETUNE, "serve"], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (data_dir / "serve.log").read_text()
            assert time.monotonic() < deadline, "edgetune serve did not become ready"
            time.sleep(0.2)
        assert (data_dir / "edgetune.db").is_file()  # the embedded default migrated itself
        yield url, env
        # Ctrl-C: the API and the worker both stop, cleanly.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, (data_dir / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_recommend_wait_against_a_live_server(server: tuple[str, dict[str, str]]) -> None:
    _, env = server
    key = ["--idempotency-key", "digits-1"]
    result = edgetune("recommend", str(DIGITS), "--wait", "--json", *key, env=env)
    assert result.returncode == 0, result.stderr
    recommendation = json.loads(result.stdout)  # stdout is pure JSON; progress went to stderr
    hyper = recommendation["hyperparameters"]
    assert hyper["learning_rate"] > 0 and hyper["batch_size"] >= 1
    assert "probes" in result.stderr  # the progress bar: phase, probes done/total, ETA

    # The same key again: the same (finished) job, printed as tables this time.
    table = edgetune("recommend", str(DIGITS), "--wait", *key, env=env)
    assert table.returncode == 0, table.stderr
    assert "Recommended hyperparameters" in table.stdout
    for name in ("learning_rate", "momentum", "batch_size", "weight_decay"):
        assert name in table.stdout

    listing = edgetune("jobs", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    jobs = json.loads(listing.stdout)["jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] == "succeeded"
    shown = edgetune("jobs", "show", jobs[0]["id"], env=env)
    assert shown.returncode == 0 and "succeeded" in shown.stdout


def test_bad_spec_prints_the_problem(server: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    _, env = server
    spec = yaml.safe_load(DIGITS.read_text())
    spec["optimizer"]["momentum"] = 1.5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    result = edgetune("recommend", str(bad), "--wait", env=env)
    assert result.returncode == 1
    assert "HTTP 422" in result.stderr and "optimizer.momentum" in result.stderr


def test_cancel_while_waiting_exits_non_zero(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = server
    spec = yaml.safe_load(DIGITS.read_text())
    # The probes take seconds; the verification run (200 epochs) takes minutes: the job is still
    # running when it is cancelled.
    spec["budget"] = {"epochs": 200, "probe_fraction": 2.0}
    spec["verify"] = True
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(spec))
    waiting = subprocess.Popen(
        [EDGETUNE, "recommend", str(long), "--wait"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        job_id = None
        while job_id is None:
            assert time.monotonic() < deadline, "the job never showed up"
            jobs = httpx.get(f"{url}/v1/jobs", params={"status": "running"}).json()["jobs"]
            job_id = jobs[0]["id"] if jobs else None
            time.sleep(0.2)
        cancelled = edgetune("jobs", "cancel", job_id, "--json", env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["cancel_requested"] is True
        _, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1
    assert f"job {job_id} cancelled" in stderr


def test_recommend_runs_embedded_when_no_server_is_given(tmp_path: Path) -> None:
    """No --url, no EDGETUNE_URL, nothing on the default port: the command runs the API and a
    worker itself on the embedded SQLite default, and still prints the recommendation."""
    try:
        httpx.get("http://127.0.0.1:8000/livez", timeout=1)
        pytest.skip("a server answers on 127.0.0.1:8000; the embedded path would not be taken")
    except httpx.HTTPError:
        pass
    env = {
        k: v for k, v in os.environ.items() if k not in ("EDGETUNE_URL", "EDGETUNE_DATABASE_URL")
    }
    env["EDGETUNE_DATA_DIR"] = str(tmp_path)
    result = edgetune(
        "recommend", str(REPO / "examples" / "digits_small.yaml"), "--wait", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "running embedded" in result.stderr
    recommendation = json.loads(result.stdout)
    assert recommendation["hyperparameters"]["learning_rate"] > 0
    assert (tmp_path / "edgetune.db").is_file()
    # The job is kept in the embedded database: `jobs list` (embedded again) shows it.
    listed = edgetune("jobs", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [job["status"] for job in json.loads(listed.stdout)["jobs"]] == ["succeeded"]
