"""The `edgetune` command through its real entry point: db commands on both databases, and
recommend/jobs against a live `edgetune serve` (embedded SQLite, API + worker in one process)."""

from __future__ import annotations

import json
import os
import re
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
from app.db import head_revision

REPO = Path(__file__).resolve().parents[1]
EDGETUNE = str(Path(sys.executable).with_name("edgetune"))
DIGITS = REPO / "examples" / "digits_small.yaml"


def edgetune(
    *args: str, env: dict[str, str], timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGETUNE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, "EDGETUNE_DATABASE_URL": settings.database_url}


def test_db_downgrade_current_upgrade(db_settings: Settings) -> None:
    env = env_for(db_settings)
    current = edgetune("db", "current", env=env)
    assert current.returncode == 0 and f"revision {head_revision()} (head)" in current.stdout

    down = edgetune("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert "revision (none)" in down.stdout and "run `edgetune db upgrade`" in down.stdout

    up = edgetune("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    assert f"revision {head_revision()} (head)" in up.stdout


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


def embedded_env(data_dir: Path) -> dict[str, str]:
    """An environment in which the CLI takes its embedded fallback (skips when a server answers
    on the default port, where the fallback would not be taken)."""
    try:
        httpx.get("http://127.0.0.1:8000/livez", timeout=1)
        pytest.skip("a server answers on 127.0.0.1:8000; the embedded path would not be taken")
    except httpx.HTTPError:
        pass
    env = {
        k: v for k, v in os.environ.items() if k not in ("EDGETUNE_URL", "EDGETUNE_DATABASE_URL")
    }
    env["EDGETUNE_DATA_DIR"] = str(data_dir)
    return env


def test_recommend_runs_embedded_when_no_server_is_given(tmp_path: Path) -> None:
    """No --url, no EDGETUNE_URL, nothing on the default port: the command runs the API and a
    worker itself on the embedded SQLite default, and still prints the recommendation."""
    env = embedded_env(tmp_path)
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
    # `plots` takes the same fallback (it used to insist on a server at the default URL).
    job_id = json.loads(listed.stdout)["jobs"][0]["id"]
    plots = edgetune("plots", job_id[:8], "--out", str(tmp_path / "plots"), env=env)
    assert plots.returncode == 0, plots.stderr
    assert (tmp_path / "plots" / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the first hour: what a new user trips over (issue "The first hour") --------------------


@pytest.fixture(scope="module")
def finished(server: tuple[str, dict[str, str]]) -> str:
    """A job of the live server that has succeeded: its id."""
    _, env = server
    result = edgetune("recommend", str(DIGITS), "--json", "--wait", env=env)
    assert result.returncode == 0, result.stderr
    jobs = json.loads(edgetune("jobs", "list", "--json", env=env).stdout)["jobs"]
    return str(next(job["id"] for job in jobs if job["status"] == "succeeded"))


def test_jobs_result_shows_a_finished_jobs_hyperparameters(
    server: tuple[str, dict[str, str]], finished: str
) -> None:
    _, env = server
    table = edgetune("jobs", "result", finished, env=env)
    assert table.returncode == 0, table.stderr
    assert "Recommended hyperparameters" in table.stdout and "learning_rate" in table.stdout
    assert "torch.optim.SGD(model.parameters(), lr=" in table.stdout
    as_json = edgetune("jobs", "result", finished, "--json", env=env)
    assert json.loads(as_json.stdout)["hyperparameters"]["batch_size"] >= 1
    shown = edgetune("jobs", "show", finished, env=env)
    assert f"edgetune jobs result {finished}" in shown.stdout
    assert "eta" not in shown.stdout  # an ended job has no progress left


def test_jobs_export_writes_every_result_as_csv_and_json_lines(
    server: tuple[str, dict[str, str]], finished: str
) -> None:
    import csv
    import io

    _, env = server
    exported = edgetune("jobs", "export", env=env)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    row = next(r for r in rows if r["job_id"] == finished)
    assert float(row["learning_rate"]) > 0 and int(row["batch_size"]) >= 1
    assert row["dataset"] == "digits" and row["validity_ok"] in ("True", "False")
    lines = edgetune("jobs", "export", "--format", "jsonl", env=env).stdout.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert any(p["job"]["id"] == finished and p["recommendation"] for p in parsed)


def test_full_ids_when_the_output_is_not_a_terminal(
    server: tuple[str, dict[str, str]], finished: str
) -> None:
    _, env = server
    listed = edgetune("jobs", "list", env={**env, "COLUMNS": "80"})
    assert listed.returncode == 0, listed.stderr
    assert finished in listed.stdout  # 32 hex digits, not cut to fit 80 columns


def test_cancelling_shows_cancel_requested_and_no_eta_once_cancelled(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = server
    spec = yaml.safe_load(DIGITS.read_text())
    # Minutes of work (a 200-epoch verification run): still queued or running when cancelled.
    spec |= {"seed": 99, "budget": {"epochs": 200, "probe_fraction": 2.0}, "verify": True}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(spec))
    job = json.loads(edgetune("recommend", str(path), "--json", env=env).stdout)
    cancelled = edgetune("jobs", "cancel", job["id"], env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    # A queued job is cancelled at once; a running one says it will stop.
    assert (
        "requested: it stops at its next measurement" in cancelled.stdout
        or "cancelled" in cancelled.stdout
    ), cancelled.stdout
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/v1/jobs/{job['id']}").json()["status"] != "cancelled":
        assert time.monotonic() < deadline, "the job was not cancelled"
        time.sleep(0.2)
    shown = edgetune("jobs", "show", job["id"], env=env)
    assert "cancelled" in shown.stdout and "eta" not in shown.stdout


def test_plots_takes_no_json_flag_and_help_names_the_api_key() -> None:
    plots = edgetune("plots", "some-job", "--out", "x", "--json", env=dict(os.environ))
    assert plots.returncode == 2 and "unrecognized arguments: --json" in plots.stderr
    usage = edgetune("--help", env=dict(os.environ)).stdout
    assert "keys" in usage.split("\n")[1] or "keys create" in usage
    assert "EDGETUNE_API_KEY" in usage
    assert "--api-key" in edgetune("recommend", "--help", env=dict(os.environ)).stdout


def test_api_key_flag_is_sent(db_settings: Settings) -> None:
    from tests.helpers import api_key, live_server

    key = api_key(db_settings)["X-API-Key"]
    env = {**env_for(db_settings)}
    env.pop("EDGETUNE_API_KEY", None)
    with live_server(db_settings) as url:
        refused = edgetune("jobs", "list", "--url", url, env=env)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
        allowed = edgetune("jobs", "list", "--url", url, "--api-key", key, "--json", env=env)
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["jobs"] == []


def test_keys_secret_for_an_unknown_tenant_creates_nothing(db_settings: Settings) -> None:
    env = env_for(db_settings)
    result = edgetune("keys", "secret", "--tenant", "nobody", env=env)
    assert result.returncode == 1 and "no tenant 'nobody'" in result.stderr
    assert result.stdout == ""
    listed = edgetune("keys", "list", "--tenant", "nobody", "--json", env=env)
    assert json.loads(listed.stdout) == []
    again = edgetune("keys", "secret", "--tenant", "nobody", env=env)
    assert again.returncode == 1  # still no tenant: the first call created none


def test_a_second_serve_on_a_busy_port_fails_before_its_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "EDGETUNE_DATA_DIR": str(tmp_path)}
        env.pop("EDGETUNE_DATABASE_URL", None)
        result = edgetune("serve", "--port", str(port), env=env, timeout=60)
    assert result.returncode == 1
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr
    assert "worker" not in result.stderr.lower().replace("stopping the worker", "")


def test_the_embedded_database_is_the_same_from_any_directory(tmp_path: Path) -> None:
    """Stumble 12: with no EDGETUNE_DATA_DIR, a job that `recommend` queued from one folder is
    listed by `jobs list` run from another (the default data dir was once ./.edgetune)."""
    env = embedded_env(tmp_path / "unused")
    del env["EDGETUNE_DATA_DIR"]
    env |= {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    queued = edgetune("recommend", str(DIGITS), "--json", env=env, cwd=first, timeout=300)
    assert queued.returncode == 0, queued.stderr
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", queued.stderr)
    assert job_id, queued.stderr
    listed = edgetune("jobs", "list", "--json", env=env, cwd=second)
    assert listed.returncode == 0, listed.stderr
    assert [job["id"] for job in json.loads(listed.stdout)["jobs"]] == [job_id[1]]
    assert (tmp_path / "xdg" / "edgetune" / "edgetune.db").is_file()
    assert not (first / ".edgetune").exists() and not (second / ".edgetune").exists()


def test_recommend_without_wait_on_the_embedded_fallback_runs_the_job(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    result = edgetune("recommend", str(DIGITS), "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "follows it to the end" in result.stderr
    assert json.loads(result.stdout)["hyperparameters"]["learning_rate"] > 0
    listed = edgetune("jobs", "list", "--json", env=env)
    assert [job["status"] for job in json.loads(listed.stdout)["jobs"]] == ["succeeded"]


def test_the_verdict_comes_first_and_the_evidence_is_one_flag_away(
    server: tuple[str, dict[str, str]], finished: str
) -> None:
    _, env = server
    result = json.loads(edgetune("jobs", "result", finished, "--json", env=env).stdout)
    verdict = result["verdict"]
    assert verdict["action"] in ("use", "care", "dont")
    table = edgetune("jobs", "result", finished, env=env).stdout
    assert table.splitlines()[0] == verdict["message"]
    assert "warning:" not in table and "paper_lambda" not in table
    assert "--details" in table
    detailed = edgetune("jobs", "result", finished, "--details", env=env).stdout
    assert "Edge of chaos (predicted)" in detailed and "validity:" in detailed
    assert "paper_lambda" in detailed
    # Every caution in plain words before the fits' technical ones, the verdict's first.
    assert (verdict["action"] == "care") == bool(verdict["reasons"])
    if verdict["reasons"]:
        assert verdict["message"] == f"use with care: {verdict['reasons'][0]}"
        why = detailed.index("why use with care:")
        for reason in verdict["reasons"]:
            assert why < detailed.index(f"  - {reason}", why) < detailed.index("validity:")


def test_shown_prefixes_are_accepted(
    server: tuple[str, dict[str, str]], finished: str, db_settings: Settings
) -> None:
    _, env = server
    shown = edgetune("jobs", "show", finished[:8], env=env)
    assert shown.returncode == 0 and finished in shown.stdout
    keys = env_for(db_settings)
    created = edgetune("keys", "create", "--tenant", "acme", env=keys)
    assert created.returncode == 0, created.stderr
    listed = json.loads(edgetune("keys", "list", "--json", env=keys).stdout)
    # As a narrow terminal shows it: cut short, with the ellipsis.
    revoked = edgetune("keys", "revoke", listed[0]["prefix"][:8] + "…", env=keys)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked key" in revoked.stdout


def test_the_numbers_table_names_the_optimizer_and_schedule_and_hides_what_does_not_apply() -> None:
    from rich.console import Console

    from edgetune.schemas import Hyperparameters
    from edgetune_cli.remote import _hyper_table

    schedule = {"name": "warmup-cosine", "warmup_epochs": 1.0, "steps_per_epoch": 100,
                "total_steps": 2000, "mean_multiplier": 0.5}  # fmt: skip
    common = {"learning_rate": 2e-4, "batch_size": 32, "weight_decay": 0.0, "epochs": 20.0,
              "paper_lambda": 0.0, "schedule": schedule}  # fmt: skip
    adamw = Hyperparameters(
        optimizer="adamw", momentum=0.0, torch_adamw_kwargs={"lr": 2e-4, "weight_decay": 0.0},
        **common,
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_hyper_table(adamw, details=False))
    text = console.export_text()
    assert "AdamW" in text and "warmup-cosine, 1-epoch warm-up" in text
    assert "momentum" not in text and "None" not in text and "kwargs" not in text
    sgd = Hyperparameters(
        momentum=0.9, torch_sgd_kwargs={"lr": 2e-4, "momentum": 0.9, "weight_decay": 0.0},
        **{**common, "schedule": None},
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_hyper_table(sgd, details=False))
    text = console.export_text()
    assert "SGD" in text and "constant" in text and "momentum" in text
