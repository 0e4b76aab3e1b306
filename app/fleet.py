"""What the workers can run. Each worker writes its advert (the model and dataset plugins it has,
with their package versions, and its device) when it starts and with every poll and heartbeat;
the API checks a plugin spec against the adverts, never importing a plugin itself.

A worker is live while it has been seen within one lease and has not stopped: the same rule that
requeues a silent worker's job (app.queue.requeue_stale). A plugin no worker has ever advertised
is unknown (the request is refused, naming the field); one only dead workers advertised leaves
the job queued with its progress saying so, for when such a worker comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.models import Worker, utcnow
from app.queue import transaction
from app.schemas import RecommendationSpec

# A worker not seen for this long is forgotten (its row deleted, by the next worker to start):
# its plugins are no longer known, so a spec naming them is refused instead of waiting forever.
FORGET_AFTER = timedelta(days=7)


@dataclass(frozen=True)
class Advert:
    models: dict[str, str]  # entry-point name → "distribution version"
    datasets: dict[str, str]
    device: str


@dataclass(frozen=True)
class PluginCheck:
    """A spec's plugins against the adverts: unknown ones as (field, message), and why the job
    will wait when every worker that has its plugins is gone (None: a live one has them)."""

    unknown: list[tuple[str, str]]
    waiting: str | None


def advertise(session: Session, worker_id: str, advert: Advert) -> None:
    """Record what `worker_id` can run, seen now: one UPDATE, or an INSERT the first time."""
    now = utcnow()
    values = {
        "models": advert.models,
        "datasets": advert.datasets,
        "device": advert.device,
        "last_seen_at": now,
        "stopped_at": None,
    }
    with transaction(session):
        found = session.execute(update(Worker).where(Worker.id == worker_id).values(**values))
        if found.rowcount == 0:  # type: ignore[attr-defined]
            session.add(Worker(id=worker_id, started_at=now, **values))


def seen(session: Session, worker_id: str) -> None:
    """The worker is alive (its job's heartbeat): one tiny UPDATE."""
    with transaction(session):
        session.execute(update(Worker).where(Worker.id == worker_id).values(last_seen_at=utcnow()))


def retire(session: Session, worker_id: str) -> None:
    """The worker stopped cleanly: its plugins are no longer live."""
    with transaction(session):
        session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow()))


def forget_stale(session: Session, *, now: datetime | None = None) -> int:
    """Delete the adverts of workers not seen for FORGET_AFTER; how many went."""
    cutoff = (now or utcnow()) - FORGET_AFTER
    with transaction(session):
        result = session.execute(delete(Worker).where(Worker.last_seen_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _needed(spec: RecommendationSpec) -> list[tuple[str, str, str]]:
    """(field, advert key, entry-point name) of each plugin the spec names."""
    needed = []
    if spec.model.type == "plugin":
        needed.append(("model.name", "models", spec.model.name))
    if spec.dataset.plugin is not None:
        needed.append(("dataset.plugin", "datasets", spec.dataset.plugin))
    return needed


def check_plugins(session: Session, spec: RecommendationSpec, lease_seconds: float) -> PluginCheck:
    needed = _needed(spec)
    if not needed:
        return PluginCheck([], None)
    with transaction(session):
        workers = list(session.scalars(select(Worker)))
    live_after = utcnow() - timedelta(seconds=lease_seconds)
    live = [w for w in workers if w.stopped_at is None and w.last_seen_at >= live_after]
    unknown = []
    for field, key, name in needed:
        known = sorted({n for w in workers for n in getattr(w, key)})
        if name not in known:
            listed = ", ".join(known) or "none"
            unknown.append((field, f"no worker has the plugin {name!r}; known: {listed}"))
    if unknown:
        return PluginCheck(unknown, None)
    having = [w for w in workers if all(name in getattr(w, key) for _, key, name in needed)]
    if any(w in live for w in having):
        return PluginCheck([], None)
    names = " and ".join(repr(name) for _, _, name in needed)
    if not having:
        return PluginCheck([], f"waiting for a worker with {names}: no worker has them all")
    last: datetime = max(w.last_seen_at for w in having)
    return PluginCheck(
        [],
        f"waiting for a worker with {names}: none is live (the last one that had them was seen "
        f"at {last.isoformat(timespec='seconds')})",
    )
