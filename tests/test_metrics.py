"""GET /metrics through real HTTP, parsed by prometheus-client's own parser, after a real worker
ran a real job on real SQLite and PostgreSQL; and JSON log lines from the real formatter."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app import queue
from app.config import Settings
from app.db import make_engine, session_factory
from tests.helpers import SMALL_SPEC, api_key, live_server


def scrape(http: httpx.Client) -> dict[str, list[Sample]]:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    [match] = [s.value for s in samples if s.name == name and s.labels == labels]
    return float(match)


def test_metrics_after_a_real_job(db_settings: Settings, tmp_path: Path) -> None:
    from worker.main import run_worker  # torch: only the worker side imports it

    # No cache: each scrape below must see the changes made just before it.
    settings = db_settings.model_copy(
        update={"data_root": str(tmp_path), "metrics_cache_seconds": 0}
    )
    headers = api_key(settings)
    with (
        live_server(settings) as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as http,
    ):
        before = scrape(http)
        for name in (
            "edgetune_jobs",
            "edgetune_queue_depth",
            "edgetune_job_duration_seconds",
            "edgetune_probe_duration_seconds",
            "edgetune_probe_config_samples_per_second",
            "edgetune_worker_heartbeat_age_seconds",
            "edgetune_webhook_deliveries",
            "edgetune_database_up",
            "edgetune_http_requests",
            "edgetune_http_request_duration_seconds",
        ):
            assert name in before, name
        assert value(before["edgetune_jobs"], "edgetune_jobs", state="succeeded") == 0
        assert math.isnan(
            value(
                before["edgetune_probe_config_samples_per_second"],
                "edgetune_probe_config_samples_per_second",
            )
        )

        job_id = http.post("/v1/recommendations", json=SMALL_SPEC).json()["id"]
        assert value(scrape(http)["edgetune_queue_depth"], "edgetune_queue_depth") == 1
        worker = threading.Thread(
            target=run_worker, args=(settings,), kwargs={"device": "cpu", "once": True}
        )
        worker.start()
        worker.join(timeout=120)
        job = http.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
        probes = http.get(f"/v1/jobs/{job_id}/probes").json()["probes"]
        assert http.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 404
        assert http.get("/no/such/path").status_code == 404
        assert http.get("/v1/jobs", headers={"X-API-Key": "wrong"}).status_code == 401

        # A running job with a fresh heartbeat, for the heartbeat age.
        running = http.post("/v1/recommendations", json=SMALL_SPEC).json()["id"]
        engine = make_engine(settings)
        with session_factory(engine)() as session:
            claimed = queue.claim(session, worker_id="metrics-test", lease_seconds=60)
            assert claimed is not None and claimed.id == running
        engine.dispose()

        after = scrape(http)

    jobs = after["edgetune_jobs"]
    assert value(jobs, "edgetune_jobs", state="succeeded") == 1
    assert value(jobs, "edgetune_jobs", state="running") == 1
    assert value(jobs, "edgetune_jobs", state="queued") == 0
    assert value(after["edgetune_queue_depth"], "edgetune_queue_depth") == 0

    durations = after["edgetune_job_duration_seconds"]
    assert value(durations, "edgetune_job_duration_seconds_count", state="succeeded") == 1
    took = value(durations, "edgetune_job_duration_seconds_sum", state="succeeded")
    assert 0 < took < 120
    assert (
        value(durations, "edgetune_job_duration_seconds_bucket", state="succeeded", le="+Inf") == 1
    )

    probe_hist = after["edgetune_probe_duration_seconds"]
    assert value(probe_hist, "edgetune_probe_duration_seconds_count") == len(probes) > 0
    assert math.isclose(
        value(probe_hist, "edgetune_probe_duration_seconds_sum"),
        sum(p["seconds"] for p in probes),
        rel_tol=1e-6,
    )
    buckets = [s.value for s in probe_hist if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == len(probes)

    rates = [
        p["summary"]["steps_done"] * p["config"]["batch_size"] / p["seconds"]
        for p in probes
        if p["seconds"] > 0
    ]
    throughput = value(
        after["edgetune_probe_config_samples_per_second"],
        "edgetune_probe_config_samples_per_second",
    )
    assert math.isclose(throughput, sum(rates) / len(rates), rel_tol=1e-6) and throughput > 0

    age = value(
        after["edgetune_worker_heartbeat_age_seconds"], "edgetune_worker_heartbeat_age_seconds"
    )
    assert 0 <= age < 30
    assert value(after["edgetune_database_up"], "edgetune_database_up") == 1

    requests = after["edgetune_http_requests"]
    by_route = {
        (s.labels["route"], s.labels["status"]) for s in requests if s.name.endswith("_total")
    }
    assert ("/v1/jobs/{job_id}", "200") in by_route
    assert ("/v1/jobs/{job_id}", "404") in by_route
    assert ("/v1/jobs/{job_id}/probes", "200") in by_route
    assert ("/v1/recommendations", "202") in by_route
    assert ("/v1/jobs", "401") in by_route
    assert ("unmatched", "404") in by_route
    # No label carries a job id: one series per route, not per job.
    assert not any(job_id in str(s.labels) for family in after.values() for s in family)
    latency = after["edgetune_http_request_duration_seconds"]
    assert (
        value(
            latency, "edgetune_http_request_duration_seconds_count", method="GET", route="/metrics"
        )
        == 2  # the two scrapes before this one (a request is counted when it ends)
    )


def test_json_log_lines_from_the_real_worker_command(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    """EDGETUNE_LOG_FORMAT=json: every stderr line of `edgetune worker` is one JSON object, and
    the lines about a job carry its id."""
    engine = make_engine(sqlite_settings)
    with session_factory(engine)() as session:
        # A dataset that is not there: the job fails at once (no training), with log lines.
        spec = {**SMALL_SPEC, "dataset": {"name": "fashion-mnist", "path": "not-here"}}
        job, _ = queue.create_job(session, spec=spec)
    engine.dispose()
    env = {
        **os.environ,
        "EDGETUNE_DATABASE_URL": sqlite_settings.database_url,
        "EDGETUNE_DATA_ROOT": str(tmp_path),
        "EDGETUNE_LOG_FORMAT": "json",
    }
    result = subprocess.run(
        [str(Path(sys.executable).with_name("edgetune")), "worker", "--once", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    about_job = [e for e in lines if e.get("job_id") == job.id]
    assert any(e["level"] == "ERROR" and "not-here" in e["message"] for e in about_job), lines
    assert any(e["logger"] == "edgetune.worker" and "job_id" not in e for e in lines)
