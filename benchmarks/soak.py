"""Soak test of the scale-out shape: nothing lost, nothing run twice, nothing down but 503s.

On a fresh PostgreSQL database (a scratch `soak_<hex>` on 127.0.0.1:5432, created, migrated with
`edgetune db upgrade` and dropped at the end; or --database URL), start one API process (the api
image's CMD from the Dockerfile) and --workers `edgetune worker` processes, make an API key with
`edgetune keys create`, and submit --jobs small jobs over HTTP (`spec`: 2-3 s each on a CPU core,
verify false, seed i). When a fifth of them have ended, one worker holding a job with some but not
all of its probes stored is `kill -9`ed (--no-kill to skip; it is not replaced, and its job waits
out --lease-seconds, 15 s, before another worker requeues it); when half have ended, PostgreSQL is
restarted once (`pg_ctlcluster ... restart`; --no-restart to skip: it disturbs every other client
of that server). A poller records every
HTTP status the API answers throughout; a second thread snapshots the probes and finished jobs
from the database, so a row rewritten later is caught.

The checks, from the database at the end (and the workers' JSON logs):
- jobs_created_once: the N POSTs (each with its Idempotency-Key, retried on 503) made N jobs;
- all_succeeded / ended_exactly_once: N jobs succeeded, each with exactly one recommendation, and
  no job's end (status, finished_at) changed after it was first seen;
- probes_unique: one probe row per (job, key);
- probes_not_rewritten: every probe row seen during the run is unchanged at the end (same id,
  seconds, created_at, outcome): a re-run probe could only have been stored by rewriting it;
- no_probe_rerun: no worker log says it ran a probe already stored ("was already stored"), and
  no (job, key) was stored twice;
- killed_job_resumed: the killed worker's job was requeued, finished by another worker, and its
  re-claim started from the probes stored before the kill (and kept them);
- http_statuses: no 5xx at all except 503s, and those only while PostgreSQL was down (plus a few
  seconds for the pool to reconnect).

    .venv/bin/python benchmarks/soak.py [--jobs 200] [--workers 3] [--no-restart] [--no-kill]
        [--database URL] [--device cpu] [--out benchmarks/results/soak.json]

Writes the result (command, git revision, machine, timings, counts, statuses, verdicts) as JSON
and exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.api_load import free_port, machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak.json"
BIN = Path(sys.executable).parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
TERMINAL = ("succeeded", "failed", "cancelled")
# After PostgreSQL accepts connections again, the API's pooled connections are found dead and
# replaced on their next use: 503s for this long after the restart still count as the outage.
OUTAGE_GRACE_SECONDS = 10.0
RESTART_COMMAND = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart"


def spec(seed: int) -> dict[str, Any]:
    """A job of a few seconds on one CPU core, with 2 probes in one population, stored as each
    ends (the faster one runs a quarter of the steps, so a worker can be killed between the two
    stores): 20000 synthetic points, MLP [32], a 20-epoch budget."""
    return {
        "model": {"type": "mlp", "hidden": [32], "activation": "tanh"},
        "dataset": {"name": "synthetic", "synthetic_samples": 20000, "synthetic_features": 16},
        "budget": {"epochs": 20, "probe_fraction": 1.0},
        "seed": seed,
        "verify": False,
    }


def conninfo(url: str) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://...) as libpq wants it."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def now() -> float:
    return time.time()


def worker_pid(worker_id: str | None) -> int | None:
    """The process id in a worker id (`host:pid:suffix`, worker.main.new_worker_id)."""
    parts = (worker_id or "").split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


@contextmanager
def scratch_database(url: str | None, keep: bool) -> Iterator[str]:
    """--database as given, or a fresh soak_<hex> database on the local server, dropped after."""
    if url:
        yield url
        return
    name = f"soak_{uuid.uuid4().hex[:10]}"
    admin = dict(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    with psycopg.connect(**admin, connect_timeout=5) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        if not keep:
            for _ in range(30):  # the server may still be coming back from the restart
                try:
                    with psycopg.connect(**admin, connect_timeout=5) as conn:  # type: ignore[arg-type]
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except psycopg.OperationalError:
                    time.sleep(1)


def api_command() -> list[str]:
    """The api image's CMD (its last CMD, in exec form), as the Dockerfile says it."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stage, cmds = None, {}
    for line in text.splitlines():
        line = line.strip()
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            stage = match.group(1)
        elif line.upper().startswith("CMD ") and stage:
            cmds[stage] = json.loads(line[4:])
    command: list[str] = cmds["api"]
    return command


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Observations:
    """What the poller and the snapshot thread saw, by the wall clock."""

    # (sent at, endpoint, status or -1 for no answer)
    http: list[tuple[float, str, int]] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    probes: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # id → first-seen row
    probe_changes: list[dict[str, Any]] = field(default_factory=list)
    ends: dict[str, tuple[str, str]] = field(default_factory=dict)  # job → (status, finished_at)
    end_changes: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    db_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def probe_reruns(logs: list[dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """From the workers' logs: a probe run although it was stored already ("was already stored
    by another worker"), or stored twice for one job, is a re-run."""
    stored: Counter[tuple[str, str]] = Counter()
    again = []
    for entry in logs:
        match = re.search(r"probe (\S+) (stored|was already stored)", entry.get("message", ""))
        if match:
            if match.group(2) == "stored":
                stored[(str(entry.get("job_id")), match.group(1))] += 1
            else:
                again.append({"job_id": entry.get("job_id"), "key": match.group(1)})
    twice = [list(k) for k, c in stored.items() if c > 1]
    return bool(stored) and not again and not twice, {
        "probe_stores_logged": sum(stored.values()),
        "ran_but_already_stored": again[:5],
        "stored_twice": twice[:5],
    }


def job_timings(jobs: list[Any]) -> dict[str, float | None]:
    """From (id, status, attempts, error, created_at, started_at, finished_at, ...) rows."""
    runtimes = [(j[6] - j[5]).total_seconds() for j in jobs if j[5] and j[6]]
    latencies = [(j[6] - j[4]).total_seconds() for j in jobs if j[6]]
    ended = [j[6] for j in jobs if j[6]]
    span = (max(ended) - min(j[4] for j in jobs)).total_seconds() if ended else 0.0
    return {
        "job_run_seconds_p50": round(statistics.median(runtimes), 2) if runtimes else None,
        "job_run_seconds_max": round(max(runtimes), 2) if runtimes else None,
        "submit_to_end_seconds_max": round(max(latencies), 1) if latencies else None,
        "jobs_per_minute": round(60 * len(ended) / span, 1) if span else None,
    }


class Soak:
    def __init__(self, args: argparse.Namespace, url: str, folder: Path) -> None:
        self.args = args
        self.url = url
        self.folder = folder
        self.env = {
            **os.environ,
            "EDGETUNE_DATABASE_URL": url,
            "EDGETUNE_DATA_DIR": str(folder / "data"),
            "EDGETUNE_LEASE_SECONDS": str(args.lease_seconds),
            "EDGETUNE_POLL_SECONDS": "0.5",
            "EDGETUNE_LOG_FORMAT": "json",
            # Several workers share few cores: one thread each, not one per core each.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.procs: list[Proc] = []
        self.workers: list[Proc] = []
        self.api_url = ""
        self.key = ""
        self.seen = Observations()
        self.stop = threading.Event()
        self.events: dict[str, Any] = {}
        self.job_ids: list[str] = []

    # -- processes ----------------------------------------------------------------------------

    def edgetune(self, *words: str) -> str:
        result = subprocess.run(
            [str(BIN / "edgetune"), *words],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"edgetune {shlex.join(words)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def spawn(self, name: str, command: list[str]) -> Proc:
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self) -> None:
        port = free_port()
        command = api_command()
        command[0] = str(BIN / command[0]) if (BIN / command[0]).exists() else command[0]
        command[command.index("--host") + 1] = "127.0.0.1"
        command[command.index("--port") + 1] = str(port)
        proc = self.spawn("api", command)
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"the API exited: {proc.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not become ready in 60 s")
            time.sleep(0.3)

    def start_workers(self) -> None:
        for i in range(self.args.workers):
            command = [str(BIN / "edgetune"), "worker", "--device", self.args.device]
            self.workers.append(self.spawn(f"worker-{i}", command))

    def stop_all(self) -> dict[str, int | None]:
        """SIGTERM everyone still running (workers give their job back), then wait."""
        codes: dict[str, int | None] = {}
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                codes[proc.name] = proc.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                codes[proc.name] = proc.popen.wait()
        return codes

    # -- HTTP ---------------------------------------------------------------------------------

    def record(self, sent: float, endpoint: str, status: int) -> None:
        with self.seen.lock:
            self.seen.http.append((sent, endpoint, status))

    def request(
        self, client: httpx.Client, method: str, path: str, endpoint: str, **kw: Any
    ) -> httpx.Response | None:
        # By when it was sent: a request sent while the database was down answers for then.
        sent = now()
        try:
            response = client.request(method, self.api_url + path, **kw)
        except httpx.HTTPError as exc:
            # No HTTP status at all (the server is up throughout, so this should not happen).
            with self.seen.lock:
                self.seen.transport_errors[f"{endpoint}: {type(exc).__name__}"] += 1
            self.record(sent, endpoint, -1)
            return None
        self.record(sent, endpoint, response.status_code)
        return response

    def submit(self) -> float:
        """POST the N jobs, each with its Idempotency-Key; a 503 or lost reply is retried."""
        started = time.monotonic()
        headers = {"X-API-Key": self.key}
        with httpx.Client(headers=headers, timeout=30) as client:
            for i in range(self.args.jobs):
                for _ in range(60):
                    response = self.request(
                        client,
                        "POST",
                        "/v1/recommendations",
                        "POST /v1/recommendations",
                        json=spec(self.args.seed + i),
                        headers={"Idempotency-Key": f"soak-{i}"},
                    )
                    if response is not None and response.status_code in (200, 202):
                        self.job_ids.append(response.json()["id"])
                        break
                    if response is not None and response.status_code != 503:
                        raise RuntimeError(f"POST answered {response.status_code}: {response.text}")
                    time.sleep(1)
                else:
                    raise RuntimeError("could not submit a job in 60 tries")
        return time.monotonic() - started

    def poll(self) -> None:
        """A client's polling, about 5 requests a second: health, a job, the list, metrics."""
        headers = {"X-API-Key": self.key}
        turn = 0
        with httpx.Client(headers=headers, timeout=10) as client:
            while not self.stop.wait(self.args.poll_interval):
                turn += 1
                self.request(client, "GET", "/readyz", "GET /readyz")
                self.request(client, "GET", "/livez", "GET /livez")
                if self.job_ids:
                    job = self.job_ids[turn % len(self.job_ids)]
                    self.request(client, "GET", f"/v1/jobs/{job}", "GET /v1/jobs/{id}")
                    if turn % 3 == 0:
                        self.request(
                            client, "GET", f"/v1/jobs/{job}/probes", "GET /v1/jobs/{id}/probes"
                        )
                self.request(client, "GET", "/v1/jobs", "GET /v1/jobs", params={"page_size": 50})
                if turn % 10 == 0:
                    self.request(client, "GET", "/metrics", "GET /metrics")

    # -- the database, watched ----------------------------------------------------------------

    def snapshot(self) -> None:
        """Every second: the probe rows and ended jobs, each compared with its first sighting."""
        while not self.stop.wait(1.0):
            try:
                self.read_snapshot()
            except psycopg.Error:
                with self.seen.lock:
                    self.seen.db_errors += 1  # PostgreSQL restarting: try again next second

    def read_snapshot(self) -> None:
        with psycopg.connect(conninfo(self.url), connect_timeout=2) as conn:
            probes = conn.execute(
                "SELECT id, job_id, key, seconds, created_at, outcome FROM probes"
            ).fetchall()
            jobs = conn.execute("SELECT id, status, finished_at FROM jobs").fetchall()
        with self.seen.lock:
            for row in probes:
                first = self.seen.probes.setdefault(row[0], tuple(row))
                if first != tuple(row):
                    self.seen.probe_changes.append({"first": repr(first), "now": repr(row)})
            counts: Counter[str] = Counter()
            for job_id, status, finished_at in jobs:
                counts[status] += 1
                if status in TERMINAL:
                    end = (status, finished_at.isoformat() if finished_at else "")
                    first_end = self.seen.ends.setdefault(job_id, end)
                    if first_end != end:
                        self.seen.end_changes.append(
                            {"job": job_id, "first": first_end, "now": end}
                        )
            self.seen.counts = dict(counts)

    def terminal_count(self) -> int:
        with self.seen.lock:
            return sum(self.seen.counts.get(s, 0) for s in TERMINAL)

    # -- faults -------------------------------------------------------------------------------

    def kill_a_worker(self, deadline: float) -> None:
        """kill -9 a worker in the middle of a job: one with some of its probes stored but not
        all (so its successor must resume from them), else, past `deadline`, any running one.

        Its own connection, polled every 50 ms: the gap between a job's two populations is
        about half a second, shorter than the snapshots' period.
        """
        pids = {w.popen.pid: w for w in self.workers if w.popen.poll() is None}
        query = (
            "SELECT j.id, j.lease_owner, count(p.id), j.progress->>'probes_total' FROM jobs j "
            "LEFT JOIN probes p ON p.job_id = j.id WHERE j.status = 'running' "
            "GROUP BY j.id, j.lease_owner, j.progress"
        )
        with psycopg.connect(conninfo(self.url), connect_timeout=5, autocommit=True) as conn:
            while True:
                running = conn.execute(query).fetchall()
                candidates = [
                    (job, pids[pid], int(stored), int(total or 0))
                    for job, owner, stored, total in running
                    if (pid := worker_pid(owner)) in pids
                ]
                mid_job = [c for c in candidates if 0 < c[2] < c[3]]
                pick = mid_job or (candidates if time.monotonic() > deadline else [])
                if pick:
                    break
                if self.terminal_count() >= self.args.jobs:
                    self.events["kill"] = {"skipped": "every job ended before a kill"}
                    return
                time.sleep(0.05)
            job, victim, _, total = pick[0]
            victim.popen.send_signal(signal.SIGKILL)
            killed_at = now()
            # What the next worker must resume from, unchanged: the probes stored by now.
            stored = conn.execute(
                "SELECT id, key, seconds, created_at FROM probes WHERE job_id = %s ORDER BY id",
                (job,),
            ).fetchall()
        victim.popen.wait()
        self.events["kill"] = {
            "worker": victim.name,
            "pid": victim.popen.pid,
            "job_id": job,
            "at": iso(killed_at),
            "t": killed_at,
            "probes_planned": total,
            "probes_stored_at_kill": [
                {"id": i, "key": k, "seconds": s, "created_at": c.isoformat()}
                for i, k, s, c in stored
            ],
        }
        print(
            f"kill -9 {victim.name} (pid {victim.popen.pid}) running job {job} "
            f"with {len(stored)} of {total} probes stored",
            flush=True,
        )

    def restart_postgres(self) -> None:
        started = now()
        command = self.args.restart_command
        result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
        returned = now()
        while True:
            try:
                with psycopg.connect(conninfo(self.url), connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if now() - started > 120:
                    raise RuntimeError("PostgreSQL did not come back within 120 s") from None
                time.sleep(0.1)
        up = now()
        self.events["restart"] = {
            "command": command,
            "returncode": result.returncode,
            "stderr": result.stderr.strip()[-500:],
            "started_at": iso(started),
            "accepting_at": iso(up),
            "seconds_until_accepting": round(up - started, 2),
            "command_seconds": round(returned - started, 2),
            "t0": started,
            "t1": up,
        }
        print(f"PostgreSQL restarted: accepting again after {up - started:.1f} s", flush=True)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.edgetune("db", "upgrade")
        self.key = self.edgetune("keys", "create", "--tenant", "soak", "--name", "soak")
        with psycopg.connect(conninfo(self.url)) as conn:
            existing = conn.execute("SELECT count(*) FROM jobs").fetchone()
        if existing and existing[0]:
            raise RuntimeError(f"the database already holds {existing[0]} jobs: give a fresh one")
        self.start_api()
        self.start_workers()
        threads = [
            threading.Thread(target=self.snapshot, daemon=True),
            threading.Thread(target=self.poll, daemon=True),
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        submit_seconds = self.submit()
        print(f"submitted {len(self.job_ids)} jobs in {submit_seconds:.1f} s", flush=True)
        n = self.args.jobs

        def wait_for(done: int) -> None:
            while self.terminal_count() < done and time.monotonic() - started < self.args.timeout:
                time.sleep(0.2)

        if self.args.kill:
            wait_for(max(1, round(n * 0.2)))
            self.kill_a_worker(deadline=time.monotonic() + 60)
        if self.args.restart:
            wait_for(max(1, round(n * 0.5)))
            if self.terminal_count() < n:
                self.restart_postgres()
            else:
                self.events["restart"] = {"skipped": "every job ended before the restart"}
        last = -1
        while self.terminal_count() < n and time.monotonic() - started < self.args.timeout:
            done = self.terminal_count()
            if done != last and (done % max(1, n // 10) == 0):
                print(f"{done}/{n} jobs ended ({time.monotonic() - started:.0f} s)", flush=True)
                last = done
            time.sleep(0.5)
        drained = time.monotonic() - started
        time.sleep(2 * self.args.poll_interval)  # a last poll and snapshot of the ended queue
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        self.read_snapshot()
        exit_codes = self.stop_all()
        result = self.verdicts()
        result["timings"] = {
            "total_seconds": round(time.monotonic() - t0, 1),
            "submit_seconds": round(submit_seconds, 2),
            "drain_seconds": round(drained, 1),
            "timed_out": self.terminal_count() < n,
            **result.pop("job_timings"),
        }
        result["exit_codes"] = exit_codes
        return result

    # -- verdicts -----------------------------------------------------------------------------

    def worker_logs(self) -> list[dict[str, Any]]:
        lines = []
        for proc in self.workers:
            for line in proc.log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict):
                    lines.append({**entry, "worker": proc.name})
        return lines

    def final_rows(self) -> tuple[list[Any], dict[str, int], list[Any], list[Any]]:
        """jobs, recommendations per job, probes, and (job, key) pairs stored more than once."""
        with psycopg.connect(conninfo(self.url)) as conn:
            jobs = conn.execute(
                "SELECT id, status, attempts, error, created_at, started_at, finished_at, "
                "lease_owner FROM jobs"
            ).fetchall()
            recommendations: dict[str, int] = dict(
                conn.execute(
                    "SELECT job_id, count(*) FROM recommendations GROUP BY job_id"
                ).fetchall()
            )
            probes = conn.execute(
                "SELECT id, job_id, key, seconds, created_at, outcome FROM probes"
            ).fetchall()
            duplicates = conn.execute(
                "SELECT job_id, key, count(*) FROM probes GROUP BY job_id, key HAVING count(*) > 1"
            ).fetchall()
        return jobs, recommendations, probes, duplicates

    def verdicts(self) -> dict[str, Any]:
        n = self.args.jobs
        jobs, recommendations, probes, duplicates = self.final_rows()
        by_id = {j[0]: j for j in jobs}
        statuses = Counter(j[1] for j in jobs)
        checks: dict[str, dict[str, Any]] = {}

        def check(name: str, ok: bool, **detail: Any) -> None:
            checks[name] = {"pass": bool(ok), **detail}

        check(
            "jobs_created_once",
            len(jobs) == n and len(set(self.job_ids)) == n == len(self.job_ids),
            jobs_in_database=len(jobs),
            distinct_ids_returned=len(set(self.job_ids)),
        )
        check(
            "all_succeeded",
            statuses.get("succeeded", 0) == n,
            statuses=dict(statuses),
            errors=sorted({j[3] for j in jobs if j[1] != "succeeded" and j[3]})[:5],
        )
        missing = [j[0] for j in jobs if j[1] == "succeeded" and recommendations.get(j[0]) != 1]
        extra = [
            k
            for k, c in recommendations.items()
            if c != 1 or by_id.get(k, ("", ""))[1] != "succeeded"
        ]
        check(
            "ended_exactly_once",
            not missing and not extra and not self.seen.end_changes,
            recommendations=sum(recommendations.values()),
            succeeded_without_one_recommendation=missing[:5],
            recommendations_not_of_one_succeeded_job=extra[:5],
            end_changed_after_first_seen=self.seen.end_changes[:5],
        )
        check(
            "probes_unique",
            not duplicates,
            probes=len(probes),
            duplicate_job_keys=[list(map(str, d)) for d in duplicates[:5]],
        )
        final = {row[0]: tuple(row) for row in probes}
        vanished = [i for i in self.seen.probes if i not in final]
        rewritten = [
            {"first": repr(first), "end": repr(final[i])}
            for i, first in self.seen.probes.items()
            if i in final and final[i] != first
        ]
        check(
            "probes_not_rewritten",
            not vanished and not rewritten and not self.seen.probe_changes,
            probe_rows_watched=len(self.seen.probes),
            vanished=vanished[:5],
            rewritten=(rewritten or self.seen.probe_changes)[:5],
        )

        logs = self.worker_logs()
        ok, detail = probe_reruns(logs)
        check("no_probe_rerun", ok, **detail)
        ok, detail = self.resumed(by_id, final, logs)
        check("killed_job_resumed", ok, **detail)
        ok, detail = self.http_verdict()
        check("http_statuses", ok, **detail)
        result: dict[str, Any] = {
            "checks": checks,
            "passed": all(c["pass"] for c in checks.values()),
            "counts": {
                "jobs": len(jobs),
                "statuses": dict(statuses),
                "probes": len(probes),
                "recommendations": sum(recommendations.values()),
                "attempts": dict(Counter(j[2] for j in jobs)),
                "http_requests": len(self.seen.http),
                "snapshot_db_errors": self.seen.db_errors,
            },
        }
        result["job_timings"] = job_timings(jobs)
        return result

    def resumed(
        self, by_id: dict[str, Any], final: dict[int, tuple[Any, ...]], logs: list[dict[str, Any]]
    ) -> tuple[bool, dict[str, Any]]:
        kill = self.events.get("kill")
        if not self.args.kill:
            return True, {"skipped": "--no-kill"}
        if not kill or "job_id" not in kill:
            return False, {"kill": kill}
        job_id = kill["job_id"]
        job = by_id[job_id]
        before = kill["probes_stored_at_kill"]
        kept = all(
            p["id"] in final
            and final[p["id"]][2] == p["key"]
            and final[p["id"]][3] == p["seconds"]
            and final[p["id"]][4].isoformat() == p["created_at"]
            for p in before
        )
        # The re-claim's own account: "N probes planned, M already stored; running ...".
        plans = [
            {"worker": e["worker"], "time": e.get("time"), "message": e["message"]}
            for e in logs
            if e.get("job_id") == job_id and "probes planned" in e.get("message", "")
        ]
        plans.sort(key=lambda p: str(p["time"]))
        later = [p for p in plans if p["worker"] != kill["worker"]]
        found = [
            int(m.group(1))
            for p in later
            if (m := re.search(r"(\d+) already stored", p["message"]))
        ]
        claims = [
            e
            for e in logs
            if e.get("job_id") == job_id and "claimed (attempt" in e.get("message", "")
        ]
        successor = sorted(
            (e for e in claims if e["worker"] != kill["worker"]), key=lambda e: str(e.get("time"))
        )
        requeued_after = None
        if successor and successor[0].get("time"):
            claimed = datetime.fromisoformat(successor[0]["time"]).timestamp()
            requeued_after = round(claimed - kill["t"], 1)
        ok = (
            job[1] == "succeeded"
            and job[2] >= 2
            and kept
            and bool(found)
            and found[0] >= len(before)
        )
        return ok, {
            "job_id": job_id,
            "status": job[1],
            "attempts": job[2],
            "probes_stored_at_kill": len(before),
            "kept_unchanged": kept,
            "successor_found_stored": found[:1],
            "reclaimed_seconds_after_kill": requeued_after,
            "plans_logged": plans,
        }

    def http_verdict(self) -> tuple[bool, dict[str, Any]]:
        restart = self.events.get("restart") or {}
        window = (restart["t0"], restart["t1"] + OUTAGE_GRACE_SECONDS) if "t0" in restart else None
        inside: Counter[str] = Counter()
        outside: Counter[str] = Counter()
        bad = []
        for t, endpoint, status in self.seen.http:
            during = window is not None and window[0] <= t <= window[1]
            (inside if during else outside)[str(status)] += 1
            # Every request is a valid one: 200/202, or a 503 while the database is down.
            if status not in (200, 202) and not (status == 503 and during):
                bad.append({"at": iso(t), "endpoint": endpoint, "status": status})
        by_endpoint: dict[str, Counter[str]] = {}
        for _, endpoint, status in self.seen.http:
            by_endpoint.setdefault(endpoint, Counter())[str(status)] += 1
        return not bad, {
            "outside_outage": dict(outside),
            "during_outage": dict(inside),
            "outage_window": [iso(window[0]), iso(window[1])] if window else None,
            "by_endpoint": {k: dict(v) for k, v in sorted(by_endpoint.items())},
            "transport_errors": dict(self.seen.transport_errors),
            "unexpected": bad[:10],
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="do not restart PostgreSQL (it disturbs the server's other users)",
    )
    parser.add_argument(
        "--no-kill", dest="kill", action="store_false", help="do not kill -9 a worker"
    )
    parser.add_argument(
        "--database",
        help="a PostgreSQL URL to use (empty; migrated here) "
        "instead of a scratch database on 127.0.0.1:5432",
    )
    parser.add_argument(
        "--restart-command",
        default=RESTART_COMMAND,
        help="how to restart PostgreSQL, a shell command (default: %(default)s)",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the scratch one")
    parser.add_argument("--device", default="cpu", help="the workers' --device")
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=15.0,
        help="EDGETUNE_LEASE_SECONDS: how soon a killed worker's job is requeued",
    )
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="job i gets seed SEED + i")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    with ExitStack() as stack:
        folder = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        url = stack.enter_context(scratch_database(args.database, args.keep_database))
        soak = Soak(args, url, folder)
        try:
            outcome = soak.run()
        finally:
            soak.stop.set()
            soak.stop_all()
        events = {
            k: {kk: vv for kk, vv in v.items() if kk not in ("t", "t0", "t1")}
            for k, v in soak.events.items()
        }
    display = ["python", "benchmarks/soak.py", *(argv if argv is not None else sys.argv[1:])]
    result = {
        "benchmark": "soak",
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join(display),
        "settings": {
            "jobs": args.jobs,
            "workers": args.workers,
            "device": args.device,
            "kill": args.kill,
            "restart": args.restart,
            "lease_seconds": args.lease_seconds,
            "database": "given (--database)" if args.database else "scratch soak_* on 127.0.0.1",
            "spec": spec(args.seed),
            "api_command": api_command(),
        },
        "machine": machine(),
        # Uncommitted changes in the checkout: the revision alone does not say what ran.
        "git_dirty": bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
            ).stdout.strip()
        ),
        "passed": outcome.pop("passed"),
        **outcome,
        "events": events,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for name, verdict in result["checks"].items():
        print(f"{'PASS' if verdict['pass'] else 'FAIL'}  {name}")
    print(f"{result['timings']} → {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
