"""Prometheus metrics at GET /metrics, in the app's own registry (made by create_app).

Job and probe metrics are read from the database at scrape time (DatabaseCollector): workers may
run in other processes or on other machines, and the database is the one place that sees all of
them, so every API replica reports the same numbers in every deployment shape. HTTP metrics are
counted in-process by HttpMetrics, labelled by route template (never the raw path, which would
make one series per job id).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import service
from app.models import WebhookDelivery, utcnow
from app.schemas import JobStatus

JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
PROBE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
# The probe throughput gauge averages this many of the newest probes.
THROUGHPUT_PROBES = 100
DELIVERY_STATUSES = ("pending", "delivered", "failed")


def _histogram(
    name: str,
    doc: str,
    buckets: Sequence[float],
    series: dict[tuple[str, ...], service.Histogram],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, histogram in series.items():
        cumulative = [(str(le), float(n)) for le, n in zip(buckets, histogram.buckets, strict=True)]
        cumulative.append(("+Inf", float(histogram.count)))
        family.add_metric(list(label_values), cumulative, sum_value=histogram.total)
    return family


class DatabaseCollector(Collector):
    """Jobs, queue, probes, heartbeats and webhooks, read from the database at each scrape.

    Cost per collection: a few aggregate queries, one per family (app.service.job_stats), each
    answering a handful of rows however many jobs there are; `Metrics.exposition` runs at most
    one collection at a time and shares its result.
    """

    def __init__(self, sessions: Callable[[], sessionmaker[Session] | None]) -> None:
        # A callable: the app's sessions exist only once its lifespan has started.
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        factory = self.sessions()
        if factory is None:
            return
        up = GaugeMetricFamily("edgetune_database_up", "1 if the database answered this scrape")
        try:
            with factory() as session:
                families = list(self._families(session, utcnow()))
        except SQLAlchemyError:
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self, session: Session, now: datetime) -> Iterator[Metric]:
        stats = service.job_stats(
            session,
            job_buckets=JOB_BUCKETS,
            probe_buckets=PROBE_BUCKETS,
            newest_probes=THROUGHPUT_PROBES,
        )
        jobs = GaugeMetricFamily("edgetune_jobs", "Jobs by state", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], float(stats.counts.get(state, 0)))
        yield jobs
        yield GaugeMetricFamily(
            "edgetune_queue_depth",
            "Queued jobs waiting for a worker",
            value=float(stats.counts.get(JobStatus.QUEUED, 0)),
        )
        yield _histogram(
            "edgetune_job_duration_seconds",
            "Wall time of finished jobs from first start to end, by final state",
            JOB_BUCKETS,
            {(status.value,): histogram for status, histogram in stats.durations.items()},
            labels=["state"],
        )

        yield _histogram(
            "edgetune_probe_duration_seconds",
            "Wall time of each stored probe",
            PROBE_BUCKETS,
            {(): stats.probes},
        )

        rates = stats.throughput
        throughput = GaugeMetricFamily(
            "edgetune_probe_config_samples_per_second",
            f"Training samples per second per probed configuration (steps·batch_size/seconds), "
            f"mean of the newest {THROUGHPUT_PROBES} stored probes",
        )
        throughput.add_metric([], sum(rates) / len(rates) if rates else math.nan)
        yield throughput

        newest_beat = stats.newest_heartbeat
        age = GaugeMetricFamily(
            "edgetune_worker_heartbeat_age_seconds",
            "Seconds since the newest heartbeat of any running job (NaN when none runs); "
            "a large value with running jobs means their workers stopped",
        )
        age.add_metric([], math.nan if newest_beat is None else (now - newest_beat).total_seconds())
        yield age

        delivery_counts = dict(
            session.execute(
                select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
            ).all()
        )
        deliveries = GaugeMetricFamily(
            "edgetune_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        for status in DELIVERY_STATUSES:
            deliveries.add_metric([status], float(delivery_counts.get(status, 0)))
        yield deliveries
        session.commit()


class Metrics:
    """One app's registry: the database collector and the HTTP request metrics.

    `exposition` is what a scrape gets. /metrics needs no key, so any number of clients may
    scrape at once: one collection runs at a time, in its own thread (never one of the request
    threads, and never more than one of the API's pooled connections), and its result serves
    every scrape that arrives within `cache_seconds` of its start. N scrapers at once cost one
    collection; the series are at most `cache_seconds` old.
    """

    def __init__(
        self, sessions: Callable[[], sessionmaker[Session] | None], *, cache_seconds: float
    ) -> None:
        self.cache_seconds = cache_seconds
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._latest: tuple[float, bytes] | None = None  # (when its collection began, body)
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgetune_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgetune_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(DatabaseCollector(sessions))

    async def exposition(self) -> bytes:
        """The Prometheus text, from a collection that began at most cache_seconds before this
        call (with 0: one that began after it, so a scraper that waited on the one running
        still gets its result)."""
        arrived = time.monotonic()
        async with self._lock:
            latest = self._latest
            if latest is not None and latest[0] >= arrived - self.cache_seconds:
                return latest[1]
            began = time.monotonic()
            # The collector queries the database: off the event loop, in this one thread.
            body = await anyio.to_thread.run_sync(
                generate_latest, self.registry, limiter=self._limiter
            )
            self._latest = (began, body)
            return body


class HttpMetrics:
    """ASGI middleware counting requests and their latency by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any response is a server error

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route in the scope; unmatched paths share one label.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; no API key needed (scrapers rarely carry one)."""
    metrics: Metrics = request.app.state.metrics
    return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
