"""Load benchmark of the HTTP API: latency and throughput at N concurrent clients over loopback.

Starts the real server (uvicorn in a subprocess, the app from `app.main:app_from_env`) on the
embedded SQLite default in a temporary data dir, and on PostgreSQL (a scratch database on
127.0.0.1:5432) when that is reachable. For each: POST /v1/recommendations (queues real jobs; no
worker runs), then GET /v1/jobs/{id} over the jobs just created. Clients are asyncio tasks sharing
one httpx.AsyncClient with one keep-alive connection each; each sends its next request as soon as
the last one answered (closed loop), so by Little's law mean latency ≈ clients / throughput.

    .venv/bin/python benchmarks/api_load.py [--clients 50] [--requests 3000] [--seconds 60]

Prints a table and writes benchmarks/results/api_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "api_load.json"
SPEC = {
    "model": {"type": "mlp", "hidden": [64]},
    "dataset": {"name": "synthetic", "synthetic_samples": 512, "synthetic_features": 16},
    "budget": {"epochs": 2, "probe_fraction": 0.5},
}
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@dataclass
class Phase:
    endpoint: str
    requests: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def load(
    client: httpx.AsyncClient,
    endpoint: str,
    send: Callable[[int], Awaitable[httpx.Response]],
    expected: int,
    *,
    clients: int,
    total: int,
    seconds: float,
) -> Phase:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def one_client() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            i = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                response = await send(i)
                if response.status_code != expected:
                    errors[f"HTTP {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return Phase(
        endpoint=endpoint,
        requests=len(latencies),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        seconds=round(elapsed, 3),
        requests_per_second=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(ms), 2),
        p90_ms=round(percentile(ms, 90), 2),
        p99_ms=round(percentile(ms, 99), 2),
        max_ms=round(max(ms), 2),
    )


async def run_load(base_url: str, clients: int, total: int, seconds: float) -> list[Phase]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        # Warm-up: open the connections, fill the server's pools and caches.
        warm = [client.post("/v1/recommendations", json=SPEC) for _ in range(clients)]
        ids = [r.json()["id"] for r in await asyncio.gather(*warm)]
        await asyncio.gather(*(client.get(f"/v1/jobs/{i}") for i in ids))

        def post(i: int) -> Awaitable[httpx.Response]:
            return client.post("/v1/recommendations", json={**SPEC, "seed": i})

        posted = await load(
            client,
            "POST /v1/recommendations",
            post,
            202,
            clients=clients,
            total=total,
            seconds=seconds,
        )
        ids += [
            j["id"]
            for j in (await client.get("/v1/jobs", params={"page_size": 100})).json()["jobs"]
        ]

        def get(i: int) -> Awaitable[httpx.Response]:
            return client.get(f"/v1/jobs/{ids[i % len(ids)]}")

        got = await load(
            client, "GET /v1/jobs/{id}", get, 200, clients=clients, total=total, seconds=seconds
        )
    return [got, posted]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(env: dict[str, str], workers: int) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready in 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A scratch database, migrated; None when PostgreSQL is not reachable."""
    import psycopg

    from app.config import Settings
    from app.db import upgrade

    try:
        admin = psycopg.connect(**PG, dbname="postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL unreachable, skipped: {str(exc).strip()}", file=sys.stderr)
        yield None
        return
    name = f"edgetune_api_load_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    try:
        upgrade(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        revision = ""
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            p: version(p) for p in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "httpx")
        },
        "git_revision": revision,
        "load_average_at_start": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000, help="per endpoint and database")
    parser.add_argument("--seconds", type=float, default=60, help="cap per endpoint and database")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    info = machine()
    runs = []
    for backend in args.backends.split(","):
        database: AbstractContextManager[str | None] = (
            postgres_database() if backend == "postgresql" else nullcontext(None)
        )
        with tempfile.TemporaryDirectory() as tmp, database as pg_url:
            env = {"EDGETUNE_DATA_DIR": tmp, "EDGETUNE_DATA_ROOT": tmp}
            if backend == "postgresql":
                if pg_url is None:
                    continue
                env["EDGETUNE_DATABASE_URL"] = pg_url
            with server(env, args.workers) as url:
                phases = asyncio.run(run_load(url, args.clients, args.requests, args.seconds))
            runs.append({"database": backend, "phases": [asdict(p) for p in phases]})

    header = f"{'database':<11}{'endpoint':<27}{'req':>6}{'err':>5}{'req/s':>8}"
    header += f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    print(f"{args.clients} concurrent clients, {args.workers} uvicorn worker(s), {info['cpu']}")
    print(header)
    for run in runs:
        for p in run["phases"]:
            print(
                f"{run['database']:<11}{p['endpoint']:<27}{p['requests']:>6}{p['errors']:>5}"
                f"{p['requests_per_second']:>8.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}"
                f"{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}"
            )
    result = {
        "benchmark": "api_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/api_load.py " + " ".join(argv or sys.argv[1:]),
        "clients": args.clients,
        "uvicorn_workers": args.workers,
        "requests_per_phase": args.requests,
        "goal": "GET /v1/jobs/{id} p99 < 50 ms, no errors",
        "machine": info,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
