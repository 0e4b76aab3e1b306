"""benchmarks/soak.py: a short run of the whole script (an API process and two `edgetune worker`
processes on real PostgreSQL, one of them kill -9ed mid-job) whose checks must pass, and its
verdict on HTTP statuses, which must tell an outage's 503s from real errors.

PostgreSQL is not restarted here: the server is shared with the other tests' databases. The
restart step still runs, with a command that restarts nothing (`--restart-command true`).
"""

from __future__ import annotations

import json
from pathlib import Path

from app.config import Settings
from benchmarks import soak
from tests.test_docker import image_command


def test_soak_smoke(pg_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["--jobs", "6", "--workers", "2", "--database", pg_settings.database_url]
    argv += ["--restart-command", "true", "--lease-seconds", "10", "--timeout", "400"]
    code = soak.main([*argv, "--out", str(out), "--logs", str(tmp_path / "logs")])
    result = json.loads(out.read_text())
    failed = {k: v for k, v in result["checks"].items() if not v["pass"]}
    assert code == 0 and result["passed"] and not failed, json.dumps(failed, indent=2)
    assert set(result["checks"]) == {
        "jobs_created_once",
        "all_succeeded",
        "ended_exactly_once",
        "probes_unique",
        "probes_not_rewritten",
        "no_probe_rerun",
        "killed_job_resumed",
        "http_statuses",
    }
    assert result["counts"]["statuses"] == {"succeeded": 6}
    assert result["counts"]["recommendations"] == 6
    # Two probes a job (the engine's plan for this spec), each stored once.
    assert result["counts"]["probes"] == 6 * 2
    # Every store is logged, except that kill -9 can land between a store's commit and its log
    # line (the row is there, the killed worker's line is not).
    assert 6 * 2 - 1 <= result["checks"]["no_probe_rerun"]["probe_stores_logged"] <= 6 * 2

    kill = result["events"]["kill"]
    resumed = result["checks"]["killed_job_resumed"]
    assert resumed["job_id"] == kill["job_id"] and resumed["attempts"] == 2
    assert result["exit_codes"][kill["worker"]] == -9
    # The restart step ran (its command a no-op here) unless every job had ended before it.
    restart = result["events"]["restart"]
    assert restart.get("returncode") == 0 or "skipped" in restart, restart
    statuses = result["checks"]["http_statuses"]
    assert set(statuses["outside_outage"]) | set(statuses["during_outage"]) <= {"200", "202"}
    assert result["command"].startswith("python benchmarks/soak.py --jobs 6")
    assert result["machine"]["git_revision"] and result["timings"]["drain_seconds"] > 0


def test_the_soak_runs_the_api_image_command() -> None:
    assert soak.api_command() == image_command("api")


def test_worker_pid_reads_worker_ids() -> None:
    assert soak.worker_pid("vm:1234:abcdef") == 1234
    assert soak.worker_pid(None) is None and soak.worker_pid("other") is None


def test_http_verdict_allows_503s_only_during_the_outage(tmp_path: Path) -> None:
    run = soak.Soak(
        soak.parse_args(["--jobs", "1"]), "postgresql+psycopg://unused/unused", tmp_path
    )
    run.events["restart"] = {"t0": 100.0, "t1": 110.0}
    grace = soak.OUTAGE_GRACE_SECONDS
    fine = [
        (50.0, "GET /readyz", 200),
        (60.0, "POST /v1/recommendations", 202),
        (100.5, "GET /readyz", 503),
        (110.0 + grace - 0.5, "GET /v1/jobs", 503),
    ]
    run.seen.http = list(fine)
    ok, detail = run.http_verdict()
    assert ok, detail
    assert detail["during_outage"] == {"503": 2} and detail["outside_outage"] == {
        "200": 1,
        "202": 1,
    }

    wrong = [
        (110.0 + grace + 1, "GET /v1/jobs", 503),  # after the outage
        (105.0, "GET /v1/jobs/{id}", 500),  # a 500 is never allowed
        (40.0, "GET /v1/jobs/{id}", 404),  # nor an answer a valid request should not get
        (70.0, "GET /livez", -1),  # nor no answer at all
    ]
    run.seen.http = fine + wrong
    ok, detail = run.http_verdict()
    assert not ok
    assert sorted(u["status"] for u in detail["unexpected"]) == [-1, 404, 500, 503]
