"""The `edgetune` command.

    edgetune serve                      API + one worker, embedded SQLite by default
    edgetune worker [--device cuda:0]   a worker on EDGETUNE_DATABASE_URL
    edgetune db upgrade|downgrade REV|current
    edgetune recommend SPEC.yaml [--wait] [--json]
    edgetune jobs list|show ID|cancel ID
    edgetune plots JOB --out DIR           the job's four plots as PNG and SVG
    edgetune reproduce [ARGS]           benchmarks/reproduce_paper.py (source checkout)

`recommend` and `jobs` talk to a running server over HTTP (--url, EDGETUNE_URL, default
http://127.0.0.1:8000). Settings come from EDGETUNE_* variables (see app/config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import httpx
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from app import logs
from app.auth import (
    AuthConfigError,
    check_auth_settings,
    create_key,
    list_keys,
    revoke_key,
    webhook_secret,
)
from app.config import Settings
from app.db import (
    DatabaseNotMigrated,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    prepare_database,
    session_factory,
    upgrade,
)

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 1.0

# soft_wrap: long messages and URLs stay on one line (copy-pasteable), whatever the width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A failure the user can act on: printed as one message, exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    try:
        return version("edgetune")
    except PackageNotFoundError:
        return "0+unknown"


def configure_logging(log_format: str = "text") -> None:
    """Text lines, or JSON lines with EDGETUNE_LOG_FORMAT=json (app/logs.py)."""
    logs.configure_logging(os.environ.get("EDGETUNE_LOG_LEVEL", "INFO"), log_format)


# --- serve, worker, db: the local side -------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """The API and one worker thread in one process; Ctrl-C (or SIGTERM) stops both cleanly."""
    import uvicorn

    from app.main import create_app

    # --host goes into the settings: whether auth may be off depends on the bound host.
    settings = Settings(**({"host": args.host} if args.host else {}))
    check_auth_settings(settings)  # before importing torch: a refused start fails fast
    from worker.main import run_worker  # torch: only the commands that train import it

    configure_logging(settings.log_format)
    host = settings.host
    port = args.port or settings.port
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)  # migrate once here, before both sides open it
    finally:
        engine.dispose()

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    # uvicorn installs its own handlers while it runs and re-raises the signal once it has shut
    # down; these catch that re-raise, so the worker is stopped and joined instead of killed.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(
        target=run_worker,
        kwargs={"settings": settings, "device": args.device, "stop": stop},
        name="edgetune-worker",
    )
    worker.start()
    # log_config=None in JSON mode: uvicorn's loggers then reach the root's JSON handler.
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=log_config)
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        stop.set()
        err.print("stopping the worker (a running job goes back to the queue)…")
        worker.join()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings()
    configure_logging(settings.log_format)
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)  # refuse an unmigrated database before importing torch
    finally:
        engine.dispose()
    from worker.main import install_signal_handlers, run_worker

    stop = threading.Event()
    install_signal_handlers(stop)
    return run_worker(settings, device=args.device, once=args.once, stop=stop)


def cmd_db(args: argparse.Namespace) -> int:
    settings = Settings()
    where = make_engine(settings)
    shown = where.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "upgrade":
            upgrade(settings, args.revision)
        elif args.db_command == "downgrade":
            downgrade(settings, args.revision)
        current, head = current_revision(where), head_revision()
    finally:
        where.dispose()
    state = "head" if current == head else f"head is {head}: run `edgetune db upgrade`"
    out.print(f"{shown}: revision {current or '(none)'} ({state})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys and tenants, on the database directly (an admin command, like `db upgrade`)."""
    settings = Settings()
    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)
        with session_factory(engine)() as session:
            return _keys(session, args)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    finally:
        engine.dispose()


def _keys(session: Session, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        created = create_key(session, tenant=args.tenant, name=args.name)
        err.print(f"API key {created.prefix}… (id {created.id}) for tenant {created.tenant!r}:")
        print(created.key)  # alone on stdout, for `KEY=$(edgetune keys create ...)`
        err.print("it is shown only this once: store it now (send it as the X-API-Key header)")
        if created.new_tenant_secret:
            err.print(
                f"new tenant {created.tenant!r}; its webhook signing secret (also shown by "
                f"`edgetune keys secret --tenant {created.tenant}`): {created.new_tenant_secret}"
            )
        return 0
    if args.keys_command == "list":
        rows = list_keys(session, tenant=args.tenant)
        if args.json:
            out.print_json(
                data=[
                    {
                        "id": k.id,
                        "tenant": k.tenant,
                        "name": k.name,
                        "prefix": k.prefix,
                        "created_at": k.created_at.isoformat(),
                        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                    }
                    for k in rows
                ]
            )
            return 0
        table = Table("id", "tenant", "name", "prefix", "created", "last used", "revoked")
        for k in rows:
            table.add_row(
                k.id,
                k.tenant,
                k.name,
                k.prefix + "…",
                f"{k.created_at:%Y-%m-%d %H:%M}",
                f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
                f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
            )
        out.print(table)
        return 0
    if args.keys_command == "revoke":
        key = revoke_key(session, args.key)
        out.print(f"revoked key {key.prefix}… (id {key.id}) of tenant {key.tenant!r}")
        return 0
    secret = webhook_secret(session, tenant=args.tenant, rotate=args.rotate)
    if args.rotate:
        err.print("rotated: webhooks are signed with this secret from now on")
    print(secret)
    return 0


# --- recommend, jobs: the HTTP side ----------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/livez", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def embedded_server() -> Iterator[str]:
    """The API and one worker on the embedded default (SQLite in the data dir), on a free
    loopback port, for the duration of one command."""
    import socket

    import uvicorn

    from app.main import create_app

    settings = Settings()
    check_auth_settings(settings)
    from worker.main import run_worker  # torch: only when a job has to run here

    engine = make_engine(settings)
    try:
        prepare_database(settings, engine)
    finally:
        engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    stop = threading.Event()
    api = threading.Thread(target=server.run, name="edgetune-api", daemon=True)
    worker = threading.Thread(
        target=run_worker,
        kwargs={"settings": settings, "device": None, "stop": stop},
        name="edgetune-worker",
    )
    api.start()
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not api.is_alive() or time.monotonic() > deadline:
                raise CliError("the embedded server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.should_exit = True
        worker.join()
        api.join(timeout=10)


@contextmanager
def reach(url: str | None) -> Iterator[str]:
    """The server a command talks to: --url or EDGETUNE_URL when given; else the local default
    when one answers there; else an embedded one started for this command."""
    given = url or os.environ.get("EDGETUNE_URL")
    if given:
        yield given
    elif _answers(DEFAULT_URL):
        yield DEFAULT_URL
    else:
        err.print(
            f"no server at {DEFAULT_URL}: running embedded (API + worker on the SQLite default "
            "in the data dir) for this command"
        )
        with embedded_server() as local:
            yield local


def client(url: str) -> httpx.Client:
    headers = {"User-Agent": f"edgetune-cli/{_version()}"}
    api_key = os.environ.get("EDGETUNE_API_KEY")
    if api_key:
        headers["X-API-Key"] = api_key
    return httpx.Client(base_url=url, headers=headers, timeout=30.0)


def problem_message(response: httpx.Response) -> str:
    """An RFC 9457 problem (or any error body) as readable lines."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:500]
        return f"HTTP {response.status_code}: {text or response.reason_phrase}"
    lines = [f"HTTP {response.status_code} {body.get('title', response.reason_phrase)}"]
    if body.get("detail"):
        lines[0] += f": {body['detail']}"
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            lines.append(f"  - {error.get('field', '?')}: {error.get('message', '')}")
    return "\n".join(lines)


def call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise CliError(
            f"cannot reach the edgetune server at {http.base_url} ({exc}); "
            "start it with `edgetune serve` or pass --url",
            code=2,
        ) from exc
    if response.status_code >= 400:
        raise CliError(problem_message(response))
    return response.json()


def load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise CliError(f"{path} is not valid {kind}: {exc}") from exc
    if not isinstance(spec, dict):
        raise CliError(f"{path} must hold a mapping (model, dataset, optimizer, budget, ...)")
    return spec


def _eta(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def follow(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """Poll the job until it ends, showing phase, probes done/total and ETA on stderr."""
    columns = (
        TextColumn("[bold]{task.fields[status]:<9}[/] {task.fields[phase]:<12}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("probes {task.fields[probes]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    last_line = ""
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(job["id"], total=1.0, status="", phase="", probes="–", eta="–")
        while True:
            progress = job.get("progress") or {}
            if not err.is_terminal:
                # No live bar in a log file: one line whenever the state moves on.
                line = (
                    f"{job['status']} {progress.get('phase', '')} probes "
                    f"{progress.get('probes_done', 0)}/{progress.get('probes_total', '?')}"
                )
                if line != last_line:
                    err.print(f"{line} ({float(progress.get('fraction') or 0):.0%})")
                    last_line = line
            bar.update(
                task,
                completed=float(progress.get("fraction") or 0.0),
                status=job["status"],
                phase=progress.get("phase", ""),
                probes=f"{progress.get('probes_done', 0)}/{progress.get('probes_total', '?')}",
                eta=_eta(progress.get("eta_seconds")),
            )
            if job["status"] in TERMINAL:
                return job
            time.sleep(POLL_SECONDS)
            job = call(http, "GET", f"/v1/jobs/{job['id']}")


def _cell(value: Any) -> str | None:
    """A table cell for a scalar or an estimate ({value, low, high}); None for bulkier data."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        text = f"{value['value']:.4g}"
        if isinstance(value.get("low"), int | float) and isinstance(value.get("high"), int | float):
            text += f" [{value['low']:.4g}, {value['high']:.4g}]"
        return text
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return None


def _facts(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    for name, value in values.items():
        cell = _cell(value)
        if cell is not None:  # trajectories, covariances, per-probe fits: see --json
            table.add_row(name, cell)
    return table


def print_recommendation(result: dict[str, Any]) -> None:
    hyper = result.get("hyperparameters")
    if isinstance(hyper, dict):
        out.print(_facts("Recommended hyperparameters", hyper))
    else:
        # A finished job can still conclude that no configuration reaches the edge; it says why.
        out.print(Text("No recommendation could be made.", style="bold"))
    kwargs = hyper.get("torch_sgd_kwargs") if isinstance(hyper, dict) else None
    if isinstance(kwargs, dict):
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        out.print(f"torch.optim.SGD(model.parameters(), {args})", highlight=False)
    for key, title in (("edge", "Edge of chaos (predicted)"), ("verification", "Verification run")):
        if isinstance(result.get(key), dict):
            out.print(_facts(title, result[key]))
    validity = result.get("validity")
    if isinstance(validity, dict):
        flags = [k for k, v in (validity.get("flags") or {}).items() if v is True]
        verdict = "ok" if validity.get("ok") else "check the warnings"
        out.print(f"validity: {verdict}" + (f" (flags: {', '.join(flags)})" if flags else ""))
        for warning in validity.get("warnings") or []:
            out.print(Text.assemble(("warning: ", "yellow"), str(warning)))
    cost = result.get("cost")
    if isinstance(cost, dict):
        out.print("cost: " + ", ".join(f"{k}={_cell(v)}" for k, v in cost.items()))
    out.print("full result (fits, trajectories, per-probe growth): --json")


def cmd_recommend(args: argparse.Namespace) -> int:
    spec = load_spec(Path(args.spec))
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with reach(args.url) as url, client(url) as http:
        job = call(http, "POST", "/v1/recommendations", json=spec, headers=headers)
        if not args.wait:
            if args.json:
                out.print_json(data=job)
            else:
                out.print(
                    f"job {job['id']} {job['status']}: follow it with `edgetune jobs show "
                    f"{job['id']}`"
                )
            return 0
        err.print(f"job {job['id']} submitted to {url}")
        try:
            job = follow(http, job)
        except KeyboardInterrupt:
            err.print(f"stopped following; the job goes on (`edgetune jobs cancel {job['id']}`)")
            return 130
        if job["status"] != "succeeded":
            raise CliError(f"job {job['id']} {job['status']}: {job.get('error') or 'no error'}")
        result = call(http, "GET", f"/v1/jobs/{job['id']}/recommendation")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_recommendation(result)
    return 0


def print_job(job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    table = Table(title=f"job {job['id']}", show_header=False)
    for name in ("status", "attempts", "created_at", "started_at", "finished_at", "error"):
        table.add_row(name, str(job.get(name)))
    table.add_row("phase", str(progress.get("phase")))
    table.add_row("probes", f"{progress.get('probes_done', 0)}/{progress.get('probes_total', 0)}")
    table.add_row("done", f"{float(progress.get('fraction') or 0):.0%}")
    table.add_row("eta", _eta(progress.get("eta_seconds")))
    out.print(table)


def cmd_jobs(args: argparse.Namespace) -> int:
    with reach(args.url) as url, client(url) as http:
        if args.jobs_command == "list":
            params: dict[str, Any] = {"page_size": args.page_size}
            if args.status:
                params["status"] = args.status
            if args.page_token:
                params["page_token"] = args.page_token
            page = call(http, "GET", "/v1/jobs", params=params)
            if args.json:
                out.print_json(data=page)
                return 0
            table = Table("id", "status", "phase", "done", "created")
            for job in page["jobs"]:
                progress = job.get("progress") or {}
                table.add_row(
                    job["id"],
                    job["status"],
                    str(progress.get("phase", "")),
                    f"{float(progress.get('fraction') or 0):.0%}",
                    str(job.get("created_at", "")),
                )
            out.print(table)
            if page.get("next_page_token"):
                out.print(f"more: --page-token {page['next_page_token']}")
            return 0
        path = f"/v1/jobs/{args.id}" + ("/cancel" if args.jobs_command == "cancel" else "")
        job = call(http, "POST" if args.jobs_command == "cancel" else "GET", path)
    if args.json:
        out.print_json(data=job)
    else:
        print_job(job)
    return 0


# --- plots, reproduce -------------------------------------------------------------------------


def cmd_plots(args: argparse.Namespace) -> int:
    """Download the job's plots (PNG and SVG) into --out, through the Python client."""
    from app.plots import PLOT_NAMES
    from edgetune.client import Client, EdgetuneError, Unreachable

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with Client(args.url) as api:
        for name in PLOT_NAMES:
            for fmt in ("png", "svg"):
                try:
                    body = api.plot(args.job, name, fmt)
                except EdgetuneError as exc:
                    code = 2 if isinstance(exc, Unreachable) else 1
                    raise CliError(f"plot {name}: {exc}", code=code) from exc
                path = out_dir / f"{name}.{fmt}"
                path.write_bytes(body)
                written.append(path)
    for path in written:
        out.print(f"{path}  ({path.stat().st_size // 1024} KiB)", highlight=False)
    return 0


def reproduce_script() -> Path:
    # A checkout's benchmarks/ sits beside app/; an installed wheel has no benchmarks/.
    return Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the paper reproduction with this Python, passing every argument through."""
    script = reproduce_script()
    if not script.is_file():
        raise CliError(
            f"{script} is missing: `edgetune reproduce` runs the benchmark script of a source "
            "checkout (git clone the repository, then `pip install -e '.[worker,benchmarks]'`)"
        )
    import subprocess
    import sys

    try:
        return subprocess.run([sys.executable, str(script), *args.script_args]).returncode
    except KeyboardInterrupt:
        return 130


# --- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API and one worker (embedded default)")
    serve.add_argument("--host", help="bind address (default EDGETUNE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default EDGETUNE_PORT or 8000)")
    serve.add_argument("--device", help="the worker's torch device (default: cuda if present)")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="run a worker: claim and run queued jobs")
    worker.add_argument("--device", help="torch device, e.g. cuda:0 (default: cuda if present)")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.set_defaults(handler=cmd_worker)

    db = commands.add_parser("db", help="database schema (Alembic migrations)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="migrate to the newest schema")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_downgrade = db_commands.add_parser("downgrade", help="migrate back to REV (base = empty)")
    db_downgrade.add_argument("revision")
    db_commands.add_parser("current", help="show the database's revision")
    db.set_defaults(handler=cmd_db)

    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        default=None,
        help=f"server URL (default EDGETUNE_URL, else {DEFAULT_URL} when a server answers "
        "there, else an embedded server for this command)",
    )
    url.add_argument("--json", action="store_true", help="print JSON instead of tables")

    recommend = commands.add_parser(
        "recommend", parents=[url], help="submit a spec (YAML or JSON) and print the result"
    )
    recommend.add_argument("spec", help="path to the spec file")
    recommend.add_argument("--wait", action="store_true", help="follow progress until done")
    recommend.add_argument("--idempotency-key", help="resubmitting with this key returns the job")
    recommend.set_defaults(handler=cmd_recommend)

    jobs = commands.add_parser("jobs", help="list, show or cancel jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = job_commands.add_parser("list", parents=[url], help="newest jobs first")
    listing.add_argument(
        "--status", choices=["queued", "running", "succeeded", "failed", "cancelled"]
    )
    listing.add_argument("--page-size", type=int, default=20)
    listing.add_argument("--page-token", help="next_page_token of the previous page")
    for name in ("show", "cancel"):
        sub = job_commands.add_parser(name, parents=[url], help=f"{name} one job")
        sub.add_argument("id")
    jobs.set_defaults(handler=cmd_jobs)

    plots = commands.add_parser(
        "plots", parents=[url], help="download a job's plots (order, collapse, growth, trajectory)"
    )
    plots.add_argument("job", help="the job id")
    plots.add_argument("--out", required=True, help="folder for the PNG and SVG files")
    plots.set_defaults(handler=cmd_plots)

    reproduce = commands.add_parser(
        "reproduce",
        add_help=False,  # --help goes to the script
        help="reproduce the paper's results (benchmarks/reproduce_paper.py; args passed on)",
    )
    reproduce.add_argument("script_args", nargs=argparse.REMAINDER)
    reproduce.set_defaults(handler=cmd_reproduce)

    keys = commands.add_parser("keys", help="API keys and tenants (on the database directly)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="a new key (printed once)")
    create.add_argument("--tenant", required=True, help="created with its webhook secret if new")
    create.add_argument("--name", default="", help="what the key is for")
    key_list = key_commands.add_parser("list", help="keys (prefixes only), all tenants or one")
    key_list.add_argument("--tenant")
    key_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id or shown prefix")
    revoke.add_argument("key", metavar="PREFIX_OR_ID")
    secret = key_commands.add_parser("secret", help="print (or --rotate) a tenant's webhook secret")
    secret.add_argument("--tenant", required=True)
    secret.add_argument("--rotate", action="store_true", help="replace it with a new secret")
    keys.set_defaults(handler=cmd_keys)
    return parser


def fail(message: str, code: int) -> NoReturn:
    # Text, not markup: a server's message may contain [brackets].
    err.print(Text.assemble(("error: ", "bold red"), message))
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Only `reproduce` takes arguments it does not know (its script's own options).
        if args.command != "reproduce":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.script_args = [*args.script_args, *extra]
    try:
        code: int = args.handler(args)
    except CliError as exc:
        fail(str(exc), exc.code)
    except (DatabaseNotMigrated, AuthConfigError) as exc:
        fail(str(exc), 1)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
