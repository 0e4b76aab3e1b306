"""GET /metrics at scale (F11a): the job-duration histogram is aggregated in SQL and equals a
brute-force count over the rows; a collection reads a bounded number of rows however many jobs
there are; a scrape at 20k finished jobs is fast; concurrent scrapers share one collection. Jobs
are inserted directly into real SQLite and PostgreSQL; scrapes go through real HTTP."""

from __future__ import annotations

import concurrent.futures
import math
import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, insert
from sqlalchemy.engine.interfaces import DBAPICursor

from app.config import Settings
from app.db import make_engine, session_factory
from app.metrics import JOB_BUCKETS, Metrics
from app.models import Job
from app.schemas import TERMINAL_STATUSES, JobStatus
from tests.helpers import live_server

FAMILY = "edgetune_job_duration_seconds"
BASE = datetime(2026, 1, 1, tzinfo=UTC)


def insert_jobs(engine: Engine, jobs: Sequence[tuple[str, timedelta | None]]) -> None:
    """(status, duration) rows: started at BASE + i seconds, finished `duration` later (None: a
    job that never finished, or for a terminal status one that never started)."""
    rows: list[dict[str, Any]] = []
    for i, (status, duration) in enumerate(jobs):
        created = BASE + timedelta(seconds=i, microseconds=i * 7919 % 1_000_000)
        started = None if duration is None and status in TERMINAL_STATUSES else created
        rows.append(
            {
                "id": uuid.uuid4().hex,
                "tenant": "scale",
                "status": status,
                "spec": {},
                "spec_hash": "0" * 64,
                "attempts": 1,
                "max_attempts": 3,
                "cancel_requested": False,
                "progress": {},
                "created_at": created,
                "updated_at": created,
                "started_at": started,
                "finished_at": None if duration is None else created + duration,
            }
        )
    with engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(Job), rows[start : start + 10_000])


def random_jobs(n: int, seed: int = 0) -> list[tuple[str, timedelta | None]]:
    rng = random.Random(seed)
    terminal = [s.value for s in JobStatus if s in TERMINAL_STATUSES]
    return [
        (rng.choice(terminal), timedelta(microseconds=rng.randrange(0, 90_000 * 10**6)))
        for _ in range(n)
    ]


def brute_force(jobs: Sequence[tuple[str, timedelta | None]]) -> dict[tuple[str, str], float]:
    """The histogram as the code before F11a computed it: one Python value per finished job."""
    durations: dict[str, list[float]] = {s.value: [] for s in JobStatus if s in TERMINAL_STATUSES}
    for status, duration in jobs:
        if status in durations and duration is not None:
            durations[status].append(max(0.0, duration.total_seconds()))
    samples: dict[tuple[str, str], float] = {}
    for status, values in durations.items():
        for le in JOB_BUCKETS:
            samples[(f"{FAMILY}_bucket", f"{status}|{le}")] = sum(1 for v in values if v <= le)
        samples[(f"{FAMILY}_bucket", f"{status}|+Inf")] = len(values)
        samples[(f"{FAMILY}_count", status)] = len(values)
        samples[(f"{FAMILY}_sum", status)] = float(sum(values))
    return samples


def scraped(text: str) -> dict[tuple[str, str], float]:
    [family] = [f for f in text_string_to_metric_families(text) if f.name == FAMILY]
    samples: dict[tuple[str, str], float] = {}
    for s in family.samples:
        if s.name.endswith("_created"):
            continue
        key = s.labels["state"] if "le" not in s.labels else f"{s.labels['state']}|{s.labels['le']}"
        samples[(s.name, key)] = s.value
    return samples


def test_job_durations_equal_a_brute_force_count(db_settings: Settings) -> None:
    # Random microsecond durations, every bucket bound exactly, a job finished before it started
    # (clamped to 0 as before), and jobs that are not counted: running, never started.
    jobs = random_jobs(150, seed=1)
    jobs += [("succeeded", timedelta(seconds=le)) for le in JOB_BUCKETS]
    jobs += [("failed", timedelta(seconds=le, microseconds=1)) for le in JOB_BUCKETS]
    jobs += [("cancelled", timedelta(seconds=-3)), ("cancelled", timedelta(0))]
    jobs += [("running", None), ("queued", None), ("cancelled", None)]
    engine = make_engine(db_settings)
    insert_jobs(engine, jobs)
    engine.dispose()
    settings = db_settings.model_copy(update={"metrics_cache_seconds": 0})
    with live_server(settings) as url:
        got = scraped(httpx.get(f"{url}/metrics").text)
    expected = brute_force(jobs)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_sum"):
            # Exact microseconds summed once vs a float sum: equal up to float rounding.
            assert math.isclose(got[key], value, rel_tol=1e-12), key
        else:
            assert got[key] == value, key


def test_a_collection_reads_a_bounded_number_of_rows(pg_settings: Settings) -> None:
    """The cost does not grow with the number of jobs: one query per family, a few rows each
    (the code before read one row per finished job). PostgreSQL only: psycopg's rowcount counts
    a SELECT's rows, sqlite3's is always -1."""
    engine = make_engine(pg_settings)
    insert_jobs(engine, random_jobs(3000, seed=2))
    rows_read = 0

    @event.listens_for(engine, "after_cursor_execute")
    def count_rows(conn: Any, cursor: DBAPICursor, *args: Any) -> None:
        nonlocal rows_read
        if cursor.description is not None:  # a SELECT
            rows_read += max(0, cursor.rowcount)

    sessions = session_factory(engine)
    metrics = Metrics(lambda: sessions, cache_seconds=0)
    body = generate_latest(metrics.registry).decode()
    engine.dispose()
    assert f'{FAMILY}_count{{state="succeeded"}}' in body
    assert rows_read < 50, rows_read


def test_a_scrape_at_20k_finished_jobs_is_fast(db_settings: Settings) -> None:
    jobs = random_jobs(20_000, seed=3)
    engine = make_engine(db_settings)
    insert_jobs(engine, jobs)
    if not db_settings.is_sqlite:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE jobs")
    engine.dispose()
    settings = db_settings.model_copy(update={"metrics_cache_seconds": 0})
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        http.get("/metrics")  # warm: the first query plans, the pool connects
        took = []
        for _ in range(3):
            started = time.perf_counter()
            response = http.get("/metrics")
            took.append(time.perf_counter() - started)
            assert response.status_code == 200
    assert scraped(response.text)[(f"{FAMILY}_count", "succeeded")] == sum(
        1 for status, _ in jobs if status == "succeeded"
    )
    assert min(took) < 0.5, took


def test_concurrent_scrapers_share_one_collection(db_settings: Settings) -> None:
    """40 scrapers at once on 20k jobs: they wait for one collection (one thread, one pooled
    connection) and get its result; a request that needs the database is not starved."""
    engine = make_engine(db_settings)
    insert_jobs(engine, random_jobs(20_000, seed=4))
    engine.dispose()
    settings = db_settings.model_copy(update={"metrics_cache_seconds": 30})
    with live_server(settings) as url:

        def scrape(_: int) -> str:
            return httpx.get(f"{url}/metrics", timeout=30).text

        with concurrent.futures.ThreadPoolExecutor(40) as pool:
            bodies = list(pool.map(scrape, range(40)))
            # Later scrapes within cache_seconds: the same collection.
            bodies += list(pool.map(scrape, range(10)))
        started = time.perf_counter()
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        ready_took = time.perf_counter() - started
    # The HTTP request counter is part of the body: one collection → byte-identical bodies.
    assert len(set(bodies)) == 1
    assert ready_took < 1.0
