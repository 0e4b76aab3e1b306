"""Every job state transition of app.queue, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from app import queue
from app.models import Job, Probe, Recommendation, utcnow

SPEC = {"model": {"type": "mlp", "hidden": [8]}, "dataset": {"name": "synthetic"}, "seed": 0}
LEASE = 30.0


def _new(session: Session, **kw: object) -> Job:
    job, created = queue.create_job(session, spec=kw.pop("spec", SPEC), **kw)  # type: ignore[arg-type]
    assert created
    return job


def _claim(session: Session, worker: str = "w1", lease: float = LEASE) -> Job:
    job = queue.claim(session, worker_id=worker, lease_seconds=lease)
    assert job is not None
    return job


def test_create_and_read(session: Session) -> None:
    job = _new(session, tenant="acme", max_attempts=2)
    assert len(job.id) == 32
    fresh = queue.get_job(session, job.id)
    assert fresh is not None
    assert (fresh.status, fresh.attempts, fresh.max_attempts, fresh.tenant) == (
        "queued",
        0,
        2,
        "acme",
    )
    assert fresh.spec == SPEC
    assert fresh.spec_hash == queue.spec_hash(SPEC)
    assert fresh.created_at.tzinfo is not None and fresh.updated_at.tzinfo is not None
    assert queue.get_job(session, job.id, tenant="other") is None


def test_idempotency_key(session: Session) -> None:
    first, created = queue.create_job(session, spec=SPEC, idempotency_key="k1")
    assert created
    again, created = queue.create_job(
        session, spec=dict(reversed(SPEC.items())), idempotency_key="k1"
    )
    assert not created and again.id == first.id  # same spec, other key order: same job
    with pytest.raises(queue.IdempotencyConflict) as exc:
        queue.create_job(session, spec={**SPEC, "seed": 1}, idempotency_key="k1")
    assert exc.value.job_id == first.id
    # Keys are per tenant; no key means no deduplication.
    _, created = queue.create_job(session, spec=SPEC, idempotency_key="k1", tenant="acme")
    assert created
    a, _ = queue.create_job(session, spec=SPEC)
    b, _ = queue.create_job(session, spec=SPEC)
    assert a.id != b.id


def test_claim_takes_the_oldest_and_sets_the_lease(session: Session) -> None:
    old, new = _new(session), _new(session)
    job = _claim(session, "w1")
    assert job.id == old.id
    assert job.status == "running" and job.attempts == 1 and job.lease_owner == "w1"
    assert job.started_at is not None and job.lease_expires_at is not None
    assert job.lease_expires_at - utcnow() > timedelta(seconds=LEASE - 5)
    assert _claim(session, "w2").id == new.id
    assert queue.claim(session, worker_id="w3", lease_seconds=LEASE) is None


def test_heartbeat_ok_cancel_lost(session: Session) -> None:
    job = _new(session)
    _claim(session, "w1", lease=1.0)
    progress = {
        "phase": "probing",
        "probes_done": 1,
        "probes_total": 4,
        "fraction": 0.25,
        "eta_seconds": 3.0,
    }
    assert (
        queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE, progress=progress)
        == "ok"
    )
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.progress == progress
    assert fresh.lease_expires_at is not None
    assert fresh.lease_expires_at - utcnow() > timedelta(seconds=LEASE - 5)
    # Another worker's heartbeat on this job: it does not own the lease.
    assert queue.heartbeat(session, job.id, worker_id="w2", lease_seconds=LEASE) == "lost"
    assert queue.request_cancel(session, job.id) is not None
    assert queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE) == "cancel"
    assert queue.mark_cancelled(session, job.id, worker_id="w1")
    assert queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE) == "lost"
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "cancelled" and fresh.finished_at is not None


def test_cancel_queued_is_immediate_and_finished_jobs_stay(session: Session) -> None:
    job = _new(session, tenant="acme")
    assert queue.request_cancel(session, job.id, tenant="other") is None
    cancelled = queue.request_cancel(session, job.id, tenant="acme")
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert queue.claim(session, worker_id="w1", lease_seconds=LEASE) is None
    assert queue.request_cancel(session, "0" * 32) is None

    done = _new(session)
    _claim(session)
    assert queue.complete(session, done.id, worker_id="w1", result={"ok": True})
    after = queue.request_cancel(session, done.id)
    assert after is not None and after.status == "succeeded"


def test_complete_stores_the_recommendation_once(session: Session) -> None:
    job = _new(session)
    _claim(session, "w1")
    assert not queue.complete(session, job.id, worker_id="w2", result={"x": 2})  # not the owner
    assert queue.complete(session, job.id, worker_id="w1", result={"x": 1})
    assert not queue.complete(session, job.id, worker_id="w1", result={"x": 3})  # not running
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "succeeded"
    assert fresh.lease_owner is None and fresh.finished_at is not None
    assert fresh.progress["fraction"] == 1.0
    assert queue.get_recommendation(session, job.id) == {"x": 1}
    assert len(session.scalars(select(Recommendation)).all()) == 1


def test_fail_or_retry(session: Session) -> None:
    job = _new(session, max_attempts=2)
    _claim(session)
    assert queue.fail_or_retry(session, job.id, worker_id="w2", error="x") is None
    assert queue.fail_or_retry(session, job.id, worker_id="w1", error="boom 1") == "queued"
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "queued" and fresh.error == "boom 1"
    assert fresh.lease_owner is None and fresh.finished_at is None
    assert _claim(session).attempts == 2
    assert queue.fail_or_retry(session, job.id, worker_id="w1", error="boom 2") == "failed"
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "failed" and fresh.error == "boom 2"
    assert fresh.finished_at is not None

    # A spec that can never run fails at once, whatever attempts are left.
    hopeless = _new(session, max_attempts=5)
    _claim(session)
    assert (
        queue.fail_or_retry(
            session, hopeless.id, worker_id="w1", error="missing files", retry=False
        )
        == "failed"
    )


def test_release_gives_the_job_back(session: Session) -> None:
    job = _new(session)
    _claim(session, "w1")
    assert not queue.release(session, job.id, worker_id="w2")
    assert queue.release(session, job.id, worker_id="w1")
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "queued" and fresh.attempts == 0
    assert fresh.lease_owner is None
    # Released while a cancel was pending: cancelled, not requeued.
    _claim(session, "w1")
    queue.request_cancel(session, job.id)
    assert queue.release(session, job.id, worker_id="w1")
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "cancelled"


def test_expired_lease_is_requeued_then_failed_at_max_attempts(session: Session) -> None:
    job = _new(session, max_attempts=2)
    _claim(session, "w1", lease=5.0)
    assert queue.requeue_stale(session) == 0  # lease still valid
    later = utcnow() + timedelta(seconds=10)
    assert queue.requeue_stale(session, now=later) == 1
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "queued" and fresh.lease_owner is None
    assert fresh.error is not None and "w1" in fresh.error
    # The dead worker comes back: its lease is gone.
    assert queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE) == "lost"
    assert not queue.complete(session, job.id, worker_id="w1", result={})

    second = _claim(session, "w2", lease=5.0)
    assert second.id == job.id and second.attempts == 2
    assert queue.requeue_stale(session, now=utcnow() + timedelta(seconds=10)) == 1
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "failed" and fresh.finished_at is not None
    assert fresh.error is not None
    assert "gave up after 2 attempts" in fresh.error and "w2" in fresh.error


def test_heartbeat_keeps_a_lease_alive_and_cancel_wins_over_requeue(session: Session) -> None:
    job = _new(session)
    _claim(session, "w1", lease=5.0)
    assert queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=60) == "ok"
    assert queue.requeue_stale(session, now=utcnow() + timedelta(seconds=10)) == 0
    queue.request_cancel(session, job.id)
    assert queue.requeue_stale(session, now=utcnow() + timedelta(seconds=120)) == 1
    fresh = queue.get_job(session, job.id)
    assert fresh is not None and fresh.status == "cancelled"


def test_a_heartbeat_is_one_statement(engine: Engine, session: Session) -> None:
    """Every running job's heartbeat thread beats about once a second (worker.main): renewing
    the lease, writing progress and reading the cancel flag is one UPDATE ... RETURNING."""
    job = _new(session)
    _claim(session, "w1")
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement.split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        beats = [queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE)]
        queue.request_cancel(session, job.id)
        sent.clear()
        beats.append(queue.heartbeat(session, job.id, worker_id="w1", lease_seconds=LEASE))
        beats.append(queue.heartbeat(session, job.id, worker_id="w2", lease_seconds=LEASE))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert beats == ["ok", "cancel", "lost"]
    assert sent == ["UPDATE", "UPDATE"]


def test_store_probe_is_idempotent(session: Session) -> None:
    job = _new(session)
    probe = {
        "key": "p00",
        "config": {"lr": 0.1},
        "outcome": "ok",
        "result": {"records": [{"step": 1, "J": [0.5]}]},
        "seconds": 0.5,
    }
    assert queue.store_probe(session, job.id, **probe)  # type: ignore[arg-type]
    assert not queue.store_probe(session, job.id, **{**probe, "seconds": 9.0})  # type: ignore[arg-type]
    assert queue.store_probe(session, job.id, **{**probe, "key": "p01"})  # type: ignore[arg-type]
    stored = queue.stored_probes(session, job.id)
    assert list(stored) == ["p00", "p01"]
    assert stored["p00"]["seconds"] == 0.5  # the first write stays
    assert stored["p00"]["result"] == probe["result"]
    assert stored["p00"]["created_at"].tzinfo is not None
    assert len(session.scalars(select(Probe)).all()) == 2


def test_concurrent_claims_never_share_a_job(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s:
        ids = {_new(s).id for _ in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        with sessions() as s:
            while (job := queue.claim(s, worker_id=worker, lease_seconds=LEASE)) is not None:
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    with sessions() as s:
        jobs = s.scalars(select(Job)).all()
        assert all(j.status == "running" and j.attempts == 1 for j in jobs)
