"""Load benchmark of the HTTP API: latency and throughput at N concurrent clients over loopback.

Starts the real server (uvicorn in a subprocess, the app from `app.main:app_from_env`) on the
embedded SQLite default in a temporary data dir, and on PostgreSQL (a scratch database on
127.0.0.1:5432) when that is reachable. For each: POST /v1/recommendations (queues real jobs; no
worker runs), then GET /v1/jobs/{id} over the jobs just created. Every simulated client is its
its own keep-alive connection: by default a lean asyncio HTTP/1.1 client (`LeanClient`), or
httpx.AsyncClient with `--client httpx`.

Two modes:
- closed: each client sends its next request as soon as the last one answered (like `wrk -c 50`).
  This measures saturation: by Little's law, mean latency ≈ clients / throughput.
- paced: each client sends one request every --pace seconds (default 0.5 s, four times as often as
  the API's Retry-After asks a poller to), so latency is the service time plus any queueing a
  realistic fleet of pollers causes.

Why a hand-written client: httpx spends about as much CPU per request as the server does. On a
2-core machine, 50 closed-loop httpx clients take half the CPU, and the latencies then measure the
load generator as much as the API (`--client httpx` shows it). `LeanClient` sends pre-formatted
requests and reads responses by Content-Length, at a small fraction of that cost.

Server CPU per request (user + system time of the uvicorn processes, from /proc) is reported too:
unlike latency, it does not depend on what else the machine is running.

    .venv/bin/python benchmarks/api_load.py [--clients 50] [--requests 2000] [--workers 1,2]

Prints a table and writes benchmarks/results/api_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
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
from json import dumps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "api_load.json"
SPEC = {
    "model": {"type": "mlp", "hidden": [64]},
    "dataset": {"name": "synthetic", "synthetic_samples": 512, "synthetic_features": 16},
    "budget": {"epochs": 2, "probe_fraction": 0.5},
}
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class LeanResponse:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class LeanClient:
    """One keep-alive HTTP/1.1 connection that speaks exactly what this benchmark sends.

    Requests are formatted once into bytes; a response is its status line, its headers (only
    Content-Length and Connection are read) and a Content-Length body: the API sends no chunked
    responses to these requests, and one would be reported as an error, not misread.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.head = f"Host: {self.host}:{self.port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> LeanResponse:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\n{self.head}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
        if length is None:
            await self.aclose()
            raise LeanClientError(f"{method} {path}: a response without Content-Length")
        content = await self.reader.readexactly(length)
        if close:
            await self.aclose()
        return LeanResponse(status, content)

    async def get(self, path: str, params: dict[str, Any] | None = None) -> LeanResponse:
        return await self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    async def post(self, path: str, json: Any) -> LeanResponse:
        return await self.request("POST", path, dumps(json).encode())

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class LeanClientError(Exception):
    pass


Client = LeanClient | httpx.AsyncClient
Reply = LeanResponse | httpx.Response
Send = Callable[[Client, int], Awaitable[Reply]]
# What a failed request raises, from either client.
CLIENT_ERRORS = (httpx.HTTPError, OSError, asyncio.IncompleteReadError, LeanClientError)


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
    server_cpu_ms_per_request: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its direct children."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


async def load(
    clients: list[Client],
    endpoint: str,
    send: Send,
    expected: int,
    *,
    server_pid: int,
    total: int,
    seconds: float,
    pace: float,
) -> Phase:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0
    cpu_before = process_tree_cpu(server_pid)
    start = time.perf_counter()
    deadline = start + seconds

    async def one_client(client: Client) -> None:
        nonlocal issued
        # Paced clients start at random offsets, so the fleet does not poll in lock-step.
        next_send = start + random.uniform(0, pace)
        while issued < total and time.perf_counter() < deadline:
            if pace:
                await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
                next_send += pace
                if issued >= total:
                    break
            i = issued
            issued += 1
            t0 = time.perf_counter()
            try:
                response = await send(client, i)
                if response.status_code != expected:
                    errors[f"HTTP {response.status_code}"] += 1
            except CLIENT_ERRORS as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one_client(c) for c in clients))
    elapsed = time.perf_counter() - start
    cpu = process_tree_cpu(server_pid) - cpu_before
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
        server_cpu_ms_per_request=round(1000 * cpu / max(1, len(latencies)), 3),
    )


async def run_load(
    base_url: str,
    server_pid: int,
    clients: int,
    total: int,
    seconds: float,
    pace: float,
    headers: dict[str, str],
    client_kind: str = "lean",
) -> list[Phase]:
    # One client (one keep-alive connection) per simulated client, as separate programs would
    # have; one shared httpx client with 50 pooled connections spends 3x the CPU per request in
    # its pool bookkeeping, and on a small machine the load generator then measures itself.
    pool: list[Client] = [
        LeanClient(base_url, headers)
        if client_kind == "lean"
        else httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(max_connections=1),
            timeout=30,
            headers=headers,
        )
        for _ in range(clients)
    ]
    try:
        # Warm-up: open the connections, fill the server's pools and caches.
        warm: list[Awaitable[Reply]] = [c.post("/v1/recommendations", json=SPEC) for c in pool]
        ids = [r.json()["id"] for r in await asyncio.gather(*warm)]
        await asyncio.gather(*(c.get(f"/v1/jobs/{i}") for c, i in zip(pool, ids, strict=True)))

        def post(client: Client, i: int) -> Awaitable[Reply]:
            return client.post("/v1/recommendations", json={**SPEC, "seed": i})

        def get(client: Client, i: int) -> Awaitable[Reply]:
            return client.get(f"/v1/jobs/{ids[i % len(ids)]}")

        def phase(endpoint: str, send: Send, expected: int) -> Awaitable[Phase]:
            return load(
                pool,
                endpoint,
                send,
                expected,
                server_pid=server_pid,
                total=total,
                seconds=seconds,
                pace=pace,
            )

        posted = await phase("POST /v1/recommendations", post, 202)
        page = await pool[0].get("/v1/jobs", params={"page_size": 100})
        ids += [job["id"] for job in page.json()["jobs"]]
        got = await phase("GET /v1/jobs/{id}", get, 200)
    finally:
        for client in pool:
            await client.aclose()
    return [got, posted]


def api_key_headers(env: dict[str, str]) -> dict[str, str]:
    """A real API key for the server's database (required beyond the embedded default)."""
    from app.auth import create_key
    from app.config import Settings
    from app.db import make_engine, session_factory

    settings = Settings(
        data_dir=Path(env["EDGETUNE_DATA_DIR"]), database_url=env.get("EDGETUNE_DATABASE_URL", "")
    )
    engine = make_engine(settings)
    try:
        with session_factory(engine)() as session:
            return {"X-API-Key": create_key(session, tenant="load", name="api_load").key}
    finally:
        engine.dispose()


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the load generator where installed (it is a dependency of the server): the
    cheaper the client, the more of the CPU the server gets."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(env: dict[str, str], workers: int) -> Iterator[tuple[str, int]]:
    """uvicorn serving the app; yields (base URL, pid)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:app_from_env",
        "--http",
        "app.main:ProblemHttpProtocol",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        # Longer than any pause between the phases, so no client reuses a connection the
        # server is just closing (a spurious ReadError, not an API error).
        "--timeout-keep-alive",
        "60",
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
        yield url, proc.pid
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
        admin = psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=3,
        )
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL unreachable, skipped: {str(exc).strip()}", file=sys.stderr)
        yield None
        return
    name = f"edgetune_api_load_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        upgrade(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> dict[str, Any]:
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
            p: version(p)
            for p in (
                "fastapi",
                "starlette",
                "uvicorn",
                "httptools",
                "uvloop",
                "sqlalchemy",
                "httpx",
                "psycopg",
            )
        },
        "git_revision": revision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per phase")
    parser.add_argument("--seconds", type=float, default=60, help="cap per phase")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker processes, a list")
    parser.add_argument("--modes", default="closed,paced")
    parser.add_argument("--pace", type=float, default=0.5, help="paced mode: s between requests")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--client", choices=("lean", "httpx"), default="lean")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    info = machine()
    load_before = os.getloadavg()
    runs = []
    for backend in args.backends.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            for mode in args.modes.split(","):
                database: AbstractContextManager[str | None] = (
                    postgres_database() if backend == "postgresql" else nullcontext(None)
                )
                with tempfile.TemporaryDirectory() as tmp, database as pg_url:
                    env = {"EDGETUNE_DATA_DIR": tmp, "EDGETUNE_DATA_ROOT": tmp}
                    if backend == "postgresql":
                        if pg_url is None:
                            continue
                        env["EDGETUNE_DATABASE_URL"] = pg_url
                    pace = args.pace if mode == "paced" else 0.0
                    with server(env, workers) as (url, pid):
                        headers = api_key_headers(env)
                        with asyncio.Runner(loop_factory=client_loop()) as runner:
                            phases = runner.run(
                                run_load(
                                    url,
                                    pid,
                                    args.clients,
                                    args.requests,
                                    args.seconds,
                                    pace,
                                    headers,
                                    args.client,
                                )
                            )
                runs.append(
                    {
                        "database": backend,
                        "uvicorn_workers": workers,
                        "mode": mode,
                        "pace_seconds": pace,
                        "phases": [asdict(p) for p in phases],
                    }
                )
                print(f"done: {backend}, {workers} worker(s), {mode}", file=sys.stderr)
    info["load_average_before"] = [round(x, 2) for x in load_before]
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    print(
        f"{args.clients} concurrent clients over loopback; {info['cpu']}, {info['cpu_count']} "
        f"CPUs, load average before/after {info['load_average_before'][0]}/"
        f"{info['load_average_after'][0]}"
    )
    print(
        f"{'database':<11}{'wrk':>4} {'mode':<7}{'endpoint':<26}{'req':>6}{'err':>5}{'req/s':>7}"
        f"{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'max ms':>8}{'cpu ms/req':>11}"
    )
    for run in runs:
        for p in run["phases"]:
            print(
                f"{run['database']:<11}{run['uvicorn_workers']:>4} {run['mode']:<7}"
                f"{p['endpoint']:<26}{p['requests']:>6}{p['errors']:>5}"
                f"{p['requests_per_second']:>7.0f}{p['p50_ms']:>8.1f}{p['p90_ms']:>8.1f}"
                f"{p['p99_ms']:>8.1f}{p['max_ms']:>8.1f}{p['server_cpu_ms_per_request']:>11.2f}"
            )
    result = {
        "benchmark": "api_load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/api_load.py " + " ".join(argv or sys.argv[1:]),
        "clients": args.clients,
        "client": args.client,
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
