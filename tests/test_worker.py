"""The worker against real databases and real torch: runs, failures, cancel, leases that outlast
a measurement interval or are taken over, slow webhook receivers, and as separate processes on
PostgreSQL: 4 workers × 40 jobs, kill -9 mid-job, SIGTERM."""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from sqlalchemy import func, make_url, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import queue, schemas
from app.config import Settings
from app.db import make_engine, session_factory
from app.models import Job, Probe, Recommendation, utcnow
from app.schemas import ProbeOrder, RecommendationSpec
from tests.db import admin_connect
from worker import recommend
from worker.data import load_dataset
from worker.main import LeaseLost, failure, run_worker
from worker.plan import plan_probes
from worker.probe import ProbeRecord, ProbeResult, _Population

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# A job in well under a second once torch is warm: a few probes of a few steps each.
TINY: dict[str, Any] = {
    "model": {"type": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_samples": 1024, "synthetic_features": 16},
    "budget": {"epochs": 2, "probe_fraction": 2.0},
}
# A job of several seconds in two populations (batch 32, then 4×32), so a worker can be stopped
# after some probes are stored and before the last one is.
LONGER: dict[str, Any] = {
    "model": {"type": "mlp", "hidden": [32]},
    "dataset": {"name": "synthetic", "synthetic_samples": 10_000, "synthetic_features": 32},
    "budget": {"epochs": 20, "probe_fraction": 0.5},
}


def planned_keys(spec: dict[str, Any], settings: Settings) -> list[str]:
    parsed = RecommendationSpec.model_validate(spec)
    dataset = load_dataset(parsed.dataset, settings.data_roots, parsed.seed)
    return [p.key for p in plan_probes(parsed, dataset)]


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def job_state(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = queue.get_job(session, job_id)
    assert job is not None
    return job


def submit(sessions: sessionmaker[Session], spec: dict[str, Any], **kw: Any) -> str:
    with sessions() as session:
        job, _ = queue.create_job(session, spec=spec, **kw)
    return job.id


# --- in-process, on both databases -----------------------------------------------------------


def test_a_job_runs_to_a_recommendation(
    db_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = submit(sessions, TINY)
    assert run_worker(db_settings, once=True) == 0
    job = job_state(sessions, job_id)
    assert job.status == "succeeded", job.error
    assert job.attempts == 1 and job.lease_owner is None and job.finished_at is not None
    keys = planned_keys(TINY, db_settings)
    assert job.progress["probes_done"] == job.progress["probes_total"] == len(keys)
    assert job.progress["fraction"] == 1.0
    with sessions() as session:
        probes = queue.stored_probes(session, job_id)
        result = queue.get_recommendation(session, job_id)
    assert sorted(probes) == sorted(keys)
    assert all(p["result"]["records"] for p in probes.values())
    for p in probes.values():
        # Stored beside the records: the series the fits read (the plots read it too).
        order = ProbeOrder.model_validate(p["result"]["order"])
        records = p["result"]["records"]
        assert order.kind == "J2" and len(order.epoch) == len(order.value) == len(records)
        assert order.layers == [[j * j for j in r["J"]] for r in records]
        c = p["result"]["config"]
        rate = c["learning_rate"] / ((1 - c["momentum"]) * c["batch_size"])
        assert order.effective_rate == rate
        assert ProbeResult.from_dict(p["result"]).records  # the stored result still reads back
    assert result is not None
    hyper = result["hyperparameters"]
    assert hyper is not None, result["validity"].get("reason")
    assert {"learning_rate", "momentum", "batch_size", "weight_decay"} <= set(hyper)
    assert result["cost"]["device"] == "cpu"
    assert result["cost"]["probe_steps"] == sum(p["result"]["steps_done"] for p in probes.values())
    assert schemas.Recommendation.model_validate(result).hyperparameters is not None


def test_a_spec_that_can_never_run_fails_at_once(
    db_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = db_settings.model_copy(update={"data_root": str(tmp_path)})
    missing = submit(
        sessions,
        {"model": {"type": "mlp"}, "dataset": {"name": "fashion-mnist", "path": "nowhere"}},
    )
    invalid = submit(sessions, {"model": {"type": "mlp", "hidden": [-3]}, "dataset": {}})
    run_worker(settings, once=True)
    run_worker(settings, once=True)
    for job_id, message in ((missing, "missing"), (invalid, "hidden")):
        job = job_state(sessions, job_id)
        assert job.status == "failed" and job.attempts == 1, (job.status, job.error)
        assert job.error is not None and message in job.error


def test_an_engine_error_fails_the_job_once_with_its_reason(
    db_settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """F7: an exception from the science (here math.exp overflowing in the fits, as F7's did) is
    raised again by every attempt on the same spec: one attempt, failed, with the reason."""

    def overflowing_fit(*args: object, **kwargs: object) -> object:
        return math.exp(1000.0)  # OverflowError: math range error

    monkeypatch.setattr(recommend, "decide", overflowing_fit)
    job_id = submit(sessions, TINY, max_attempts=3)
    assert run_worker(db_settings, once=True) == 0
    job = job_state(sessions, job_id)
    assert job.status == "failed" and job.attempts == 1, (job.status, job.attempts, job.error)
    assert job.error == "OverflowError: math range error"
    assert job.finished_at is not None and job.lease_owner is None


def _refuses_oversized_allocations(size: int) -> bool:
    """Whether the kernel refuses a `size`-byte allocation at once (heuristic or strict
    overcommit, and less memory than that) instead of granting it and OOM-killing us later."""
    try:
        mode = Path("/proc/sys/vm/overcommit_memory").read_text().strip()
        meminfo = dict(
            line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()
        )
    except OSError:
        return False
    total_kib = sum(int(meminfo[k].split()[0]) for k in ("MemTotal", "SwapTotal") if k in meminfo)
    return mode in ("0", "2") and total_kib * 1024 < size


# The largest synthetic dataset a spec may ask for: 1e6 × 65536 float64 values (488 GiB) that the
# dataset loader really allocates; no test machine has that much memory.
HUGE_DATA: dict[str, Any] = {
    "model": {"type": "mlp", "hidden": [16]},
    "dataset": {"name": "synthetic", "synthetic_samples": 1_000_000, "synthetic_features": 65_536},
}


@pytest.mark.skipif(
    not _refuses_oversized_allocations(1_000_000 * 65_536 * 8),
    reason="this machine would grant a 488 GiB allocation instead of raising MemoryError",
)
def test_out_of_memory_fails_the_job_once_saying_what_to_change(
    db_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = submit(sessions, HUGE_DATA, max_attempts=3)
    assert run_worker(db_settings, once=True) == 0
    job = job_state(sessions, job_id)
    assert job.status == "failed" and job.attempts == 1, (job.status, job.attempts, job.error)
    assert job.error is not None
    assert job.error.startswith("out of memory in host RAM (MemoryError: Unable to allocate")
    assert "batch_size" in job.error and "synthetic_samples" in job.error


def test_only_database_and_lease_errors_are_retried() -> None:
    """`failure`: what the job's error says and whether another attempt is worth it."""
    cpu = torch.device("cpu")
    dropped = OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection"))
    assert failure(dropped, cpu)[1] is True
    assert failure(LeaseLost("lease ran out"), cpu) == ("LeaseLost: lease ran out", True)
    for deterministic in (OverflowError("math range error"), ValueError("x"), KeyError("k")):
        assert failure(deterministic, cpu)[1] is False
    try:
        torch.empty(2**40, dtype=torch.uint8)  # 1 TiB: refused by torch's CPU allocator
    except RuntimeError as exc:
        allocator = exc
    else:
        pytest.skip("this machine granted a 1 TiB tensor")
    cuda_oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nadvice...")
    cuda = torch.device("cuda:0")
    for oom, where in (
        (MemoryError("Unable to allocate 488. GiB"), "in host RAM (MemoryError: "),
        (allocator, "in host RAM (RuntimeError: "),
        (cuda_oom, "on cuda:0 (OutOfMemoryError: CUDA out of memory. Tried"),
    ):
        message, retry = failure(oom, cuda)
        assert retry is False and message.startswith(f"out of memory {where}"), message
        assert "\n" not in message and "batch_size" in message


def test_cancel_stops_a_running_job_at_the_next_measurement(
    db_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    job_id = submit(sessions, LONGER)
    worker = threading.Thread(target=run_worker, args=(db_settings,), kwargs={"once": True})
    worker.start()
    try:
        wait_for(
            lambda: job_state(sessions, job_id).progress.get("phase") == "probing", 60, "probing"
        )
        asked = time.monotonic()
        with sessions() as session:
            queue.request_cancel(session, job_id)
        wait_for(lambda: job_state(sessions, job_id).status == "cancelled", 20, "cancelled")
        assert time.monotonic() - asked < 10
    finally:
        worker.join(timeout=60)
    assert not worker.is_alive()
    with sessions() as session:
        assert queue.get_recommendation(session, job_id) is None


@contextmanager
def database_outage(settings: Settings, seconds: float) -> Iterator[None]:
    """PostgreSQL down, as far as this database's clients can tell (a restart, a failover), for
    `seconds` before the block runs and until it ends: no new connections, every open one
    terminated."""
    database = make_url(settings.database_url).database
    with admin_connect() as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                time.sleep(0.05)
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


def test_a_short_database_outage_costs_a_running_job_nothing(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """F9: heartbeats, progress and probe stores ride out a 4 s outage of PostgreSQL (retried
    with backoff within the lease), so the job finishes in its first attempt."""
    settings = pg_settings.model_copy(update={"lease_seconds": 20.0})
    engine = make_engine(settings)
    sessions = session_factory(engine)
    job_id = submit(sessions, LONGER)
    worker = threading.Thread(target=run_worker, args=(settings,), kwargs={"once": True})
    caplog.set_level(logging.WARNING, logger="edgetune.worker")
    worker.start()
    try:
        wait_for(
            lambda: job_state(sessions, job_id).progress.get("phase") == "probing", 60, "probing"
        )
        with database_outage(settings, 4.0):
            pass
        engine.dispose()  # this test's own pooled connections were terminated too
    finally:
        worker.join(timeout=120)
    assert not worker.is_alive()
    assert "database unavailable" in caplog.text  # the outage did hit the worker's writes
    job = job_state(sessions, job_id)
    assert job.status == "succeeded" and job.attempts == 1, (job.status, job.attempts, job.error)
    with sessions() as session:
        assert sorted(queue.stored_probes(session, job_id)) == sorted(
            planned_keys(LONGER, settings)
        )
        assert queue.get_recommendation(session, job_id) is not None
    engine.dispose()


def test_an_outage_longer_than_the_lease_leaves_the_job_to_the_reaper(
    pg_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The retries stop when the lease would have run out anyway: the worker gives the job up
    (it does not crash), and the next claim reaps it and resumes from its stored probes."""
    settings = pg_settings.model_copy(update={"lease_seconds": 3.0})
    engine = make_engine(settings)
    sessions = session_factory(engine)
    job_id = submit(sessions, LONGER)
    worker = threading.Thread(target=run_worker, args=(settings,), kwargs={"once": True})
    caplog.set_level(logging.WARNING, logger="edgetune.worker")
    worker.start()
    try:
        wait_for(
            lambda: job_state(sessions, job_id).progress.get("phase") == "probing", 60, "probing"
        )
        with database_outage(settings, 6.0):
            worker.join(timeout=30)  # it gives up within the lease, while still cut off
        assert not worker.is_alive()
        engine.dispose()
    finally:
        worker.join(timeout=120)
    assert "until the lease ran out" in caplog.text
    assert job_state(sessions, job_id).status == "running"  # nobody has reaped it yet
    assert run_worker(settings, once=True) == 0
    job = job_state(sessions, job_id)
    assert job.status == "succeeded" and job.attempts == 2, (job.status, job.attempts, job.error)
    engine.dispose()


# --- leases longer than training's silences; slow webhook receivers (F8, F10) ------------------


@dataclass
class Stall:
    """One measurement made `seconds` longer (`stall_a_measurement`), in wall-clock time."""

    seconds: float
    began: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    began_at: float = 0.0
    ended_at: float = 0.0


def stall_a_measurement(
    monkeypatch: pytest.MonkeyPatch, seconds: float, *, finishing: bool = False
) -> Stall:
    """The first measurement after step 0 (with `finishing`: the first at a member's last step,
    the one that hands finished probes to the worker) first computes for `seconds`: a measurement
    interval longer than the lease, as F8's 3×128-channel CNN on Fashion-MNIST had (76–98 s
    against a 60 s lease), in seconds instead of minutes. CPU work like training's, not a sleep."""
    stall = Stall(seconds)
    lock = threading.Lock()
    measure = _Population.measure

    def slow_measure(
        pop: _Population, step: int, last_record: int, with_eval: bool, with_chi: bool = True
    ) -> list[tuple[ProbeRecord, int | None]]:
        due = step > 0 and (not finishing or any(pop.configs[m].steps == step for m in pop.members))
        with lock:
            now = due and not stall.began.is_set()
            if now:
                stall.began_at = time.time()
                stall.began.set()
        if now:
            a = torch.rand(128, 128)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                a = torch.tanh(a @ a)
            stall.ended_at = time.time()
            stall.ended.set()
        return measure(pop, step, last_record, with_eval, with_chi)

    monkeypatch.setattr(_Population, "measure", slow_measure)
    return stall


@contextmanager
def worker_threads(settings: Settings, count: int) -> Iterator[threading.Event]:
    """`count` workers polling in threads of this process until the block ends."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_worker,
            args=(settings,),
            kwargs={"device": "cpu", "stop": stop, "worker_id": f"w{i}"},
        )
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def test_a_measurement_interval_longer_than_the_lease_keeps_the_job(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """F8: the heartbeat thread renews the lease through a measurement interval of 8 s on a 3 s
    lease, with a second worker polling (and reaping) every 0.1 s: nobody takes the job over,
    and its first attempt finishes it. Before the fix the lease was only renewed at
    measurements: the second worker reaped the job and ran it again."""
    settings = db_settings.model_copy(update={"lease_seconds": 3.0, "poll_seconds": 0.1})
    stall = stall_a_measurement(monkeypatch, 8.0)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    job_id = submit(sessions, TINY)
    caplog.set_level(logging.INFO, logger="edgetune.worker")
    beats: list[Any] = []
    with worker_threads(settings, 2):
        wait_for(stall.began.is_set, 60, "the long measurement interval", every=0.01)
        while not stall.ended.is_set():
            beats.append(job_state(sessions, job_id).heartbeat_at)
            time.sleep(0.1)
        wait_for(
            lambda: job_state(sessions, job_id).status not in ("queued", "running"), 120, "the end"
        )
    job = job_state(sessions, job_id)
    assert job.status == "succeeded" and job.attempts == 1, (job.status, job.attempts, job.error)
    assert job.error is None
    assert caplog.text.count("claimed (attempt") == 1 and "expired leases" not in caplog.text
    renewals = sorted(set(beats))
    gaps = [(b - a).total_seconds() for a, b in zip(renewals, renewals[1:], strict=False)]
    # About one beat every lease/4 = 0.75 s all through the 8 s without a measurement.
    assert len(renewals) >= 5 and max(gaps) < settings.lease_seconds / 2, gaps
    engine.dispose()


def take_over(sessions: sessionmaker[Session], job_id: str, worker_id: str) -> Job:
    """Another worker takes the job over as if its lease had run out: expired and reaped in one
    transaction (the loser's heartbeat cannot slip in between), then claimed."""
    with sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        assert queue.requeue_stale(session) == 1
        claimed = queue.claim(session, worker_id=worker_id, lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    return claimed


def test_a_worker_whose_lease_was_taken_over_stops_at_once_and_stores_nothing(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """F8: the loser's next beat finds the job owned by another worker, during a long
    measurement interval; at the end of it the loser stores none of the probes it finished,
    runs not one more step and writes nothing else. Before the fix it learned only at that
    measurement, after storing them."""
    settings = db_settings.model_copy(update={"lease_seconds": 30.0})
    stall = stall_a_measurement(monkeypatch, 6.0, finishing=True)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    job_id = submit(sessions, TINY)
    caplog.set_level(logging.INFO, logger="edgetune.worker")
    worker = threading.Thread(
        target=run_worker, args=(settings,), kwargs={"device": "cpu", "once": True}
    )
    worker.start()
    try:
        wait_for(stall.began.is_set, 60, "the long measurement interval", every=0.01)
        with sessions() as session:
            before = queue.stored_probes(session, job_id)
        take_over(sessions, job_id, "thief")
    finally:
        worker.join(timeout=60)
    assert not worker.is_alive()
    stopped_at = time.time()
    assert stall.ended.is_set()
    with sessions() as session:
        assert queue.stored_probes(session, job_id) == before  # nothing stored by the loser
        assert queue.get_recommendation(session, job_id) is None
    job = job_state(sessions, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "thief", 2)
    lost = [r for r in caplog.records if r.getMessage().endswith("next measurement: lost")]
    # Seen by a beat while training was still inside its long interval ...
    assert lost and lost[0].created < stall.ended_at, caplog.text
    # ... and acted on at the very next measurement: the worker is done right after it.
    assert stopped_at - stall.ended_at < 3.0
    assert "lease lost; another worker owns the job now" in caplog.text
    engine.dispose()


@dataclass
class DrippingReceiver:
    """A webhook receiver that reads the request, then answers one byte every 2 s (F10)."""

    url: str = ""
    requested: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


@contextmanager
def dripping_receiver() -> Iterator[DrippingReceiver]:
    state = DrippingReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            state.requested.set()
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if state.stop.wait(2.0):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            else:
                state.answered.set()
            self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()


def test_a_slow_webhook_receiver_does_not_delay_claiming(db_settings: Settings) -> None:
    """F10: while a delivery to a receiver that drips one byte every 2 s is in flight, the next
    queued job is claimed within a couple of poll intervals. Before the fix deliveries ran in the
    claim loop, which waited for the whole delivery."""
    settings = db_settings.model_copy(
        update={"poll_seconds": 0.2, "webhook_allow_private": True, "webhook_timeout_seconds": 10}
    )
    engine = make_engine(settings)
    sessions = session_factory(engine)
    with worker_threads(settings, 1), dripping_receiver() as hook:
        first = submit(sessions, {**TINY, "callback_url": hook.url})
        wait_for(hook.requested.is_set, 60, "the first job's webhook", every=0.01)
        assert job_state(sessions, first).status == "succeeded"
        submitted = time.monotonic()
        second = submit(sessions, TINY)
        wait_for(
            lambda: job_state(sessions, second).status != "queued", 30, "the claim", every=0.02
        )
        claimed_in = time.monotonic() - submitted
        assert not hook.answered.is_set()  # the delivery is still in flight
        assert claimed_in < 3 * settings.poll_seconds + 0.5, claimed_in
        wait_for(lambda: job_state(sessions, second).status == "succeeded", 60, "the 2nd job")
    engine.dispose()


# --- separate worker processes ---------------------------------------------------------------


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts `python -m worker.main` processes (logs in tmp_path); kills leftovers at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, name: str, **env: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "EDGETUNE_DATABASE_URL": settings.database_url,
            "EDGETUNE_DATA_DIR": str(tmp_path / "data"),
            "EDGETUNE_POLL_SECONDS": "0.1",
            "EDGETUNE_LOG_LEVEL": "INFO",
            # Several workers share two cores: one thread each avoids oversubscription.
            "OMP_NUM_THREADS": "1",
            **env,
        }
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.main"],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_m_worker_main_once(tmp_path: Path) -> None:
    """`python -m worker.main --once` refuses an unmigrated database; on the embedded default
    (migrated on start) with nothing queued it exits 0 at once."""
    fresh = {**os.environ, "EDGETUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    refused = subprocess.run(
        [sys.executable, "-m", "worker.main", "--once"],
        cwd=REPO,
        env=fresh,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1, refused.stderr
    assert "run `edgetune db upgrade`" in refused.stderr and "Traceback" not in refused.stderr
    embedded = {k: v for k, v in os.environ.items() if k != "EDGETUNE_DATABASE_URL"}
    embedded["EDGETUNE_DATA_DIR"] = str(tmp_path / "data")
    idle = subprocess.run(
        [sys.executable, "-m", "worker.main", "--once", "--device", "cpu"],
        cwd=REPO,
        env=embedded,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert idle.returncode == 0, idle.stderr
    assert "stopped" in idle.stderr


def read_log(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text()


def stop_worker(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def test_four_workers_forty_jobs_each_done_exactly_once(
    pg_settings: Settings, workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    engine = make_engine(pg_settings)
    sessions = session_factory(engine)
    ids = [submit(sessions, {**TINY, "seed": i}) for i in range(40)]
    procs = [workers(pg_settings, f"w{i}") for i in range(4)]

    def all_done() -> bool:
        with sessions() as session:
            n = session.scalar(select(func.count()).where(Job.status.in_(("queued", "running"))))
        return n == 0

    wait_for(all_done, 150, "40 jobs to finish", every=0.5)
    assert [stop_worker(p) for p in procs] == [0, 0, 0, 0]

    with sessions() as session:
        jobs = session.scalars(select(Job)).all()
        assert {j.id for j in jobs} == set(ids)
        assert all(j.status == "succeeded" and j.attempts == 1 for j in jobs), [
            (j.status, j.error) for j in jobs if j.status != "succeeded"
        ]
        assert session.scalar(select(func.count()).select_from(Recommendation)) == 40
        per_job = Counter(session.scalars(select(Probe.job_id)).all())
    keys = planned_keys(TINY, pg_settings)
    assert per_job == {job_id: len(keys) for job_id in ids}

    logs = "".join(read_log(tmp_path, f"w{i}") for i in range(4))
    claims = Counter(re.findall(r"job ([0-9a-f]{32}): claimed", logs))
    assert claims == {job_id: 1 for job_id in ids}  # each job run once, by one worker
    stores = Counter(re.findall(r"job ([0-9a-f]{32}): probe (p\d+) stored", logs))
    assert len(stores) == 40 * len(keys) and set(stores.values()) == {1}  # no probe twice
    assert "already stored by another worker" not in logs
    busy = [i for i in range(4) if "claimed" in read_log(tmp_path, f"w{i}")]
    assert len(busy) >= 2, "the jobs were not shared between workers"
    engine.dispose()


def test_killed_worker_job_resumes_elsewhere_without_rerunning_stored_probes(
    pg_settings: Settings, workers: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    engine = make_engine(pg_settings)
    sessions = session_factory(engine)
    keys = planned_keys(LONGER, pg_settings)
    job_id = submit(sessions, LONGER)
    lease = {"EDGETUNE_LEASE_SECONDS": "3"}
    first = workers(pg_settings, "first", **lease)

    def some_stored() -> dict[str, dict[str, Any]]:
        with sessions() as session:
            return queue.stored_probes(session, job_id)

    wait_for(some_stored, 120, "a stored probe", every=0.02)
    first.kill()  # SIGKILL: no chance to clean up, the lease just stops being renewed
    first.wait()
    before = some_stored()
    job = job_state(sessions, job_id)
    assert job.status == "running" and job.lease_owner is not None
    assert 0 < len(before) < len(keys), f"killed too late: {sorted(before)} of {keys}"

    second = workers(pg_settings, "second", **lease)
    wait_for(lambda: job_state(sessions, job_id).status == "succeeded", 120, "the job to finish")
    assert stop_worker(second) == 0

    job = job_state(sessions, job_id)
    assert job.attempts == 2
    after = some_stored()
    assert sorted(after) == sorted(keys)
    for key, probe in before.items():  # kept as they were: same rows, same times
        assert (after[key]["id"], after[key]["created_at"]) == (probe["id"], probe["created_at"])
    remaining = sorted(set(keys) - set(before))
    log = read_log(tmp_path, "second")
    assert f"{len(before)} already stored; running {', '.join(remaining)}" in log
    assert sorted(re.findall(r"probe (p\d+) stored", log)) == remaining
    assert "requeued 1 jobs with expired leases" in log
    engine.dispose()


def test_sigterm_gives_the_job_back_and_exits_zero(
    sqlite_settings: Settings, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    # On SQLite: a worker process and this test share the file (PostgreSQL's multi-process
    # behaviour is covered above).
    engine = make_engine(sqlite_settings)
    sessions = session_factory(engine)
    job_id = submit(sessions, LONGER)
    proc = workers(sqlite_settings, "term")
    wait_for(lambda: job_state(sessions, job_id).progress.get("phase") == "probing", 90, "probing")
    assert stop_worker(proc) == 0
    job = job_state(sessions, job_id)
    assert job.status == "queued" and job.lease_owner is None
    assert job.attempts == 0  # a deliberate stop is not a failed attempt
    engine.dispose()
