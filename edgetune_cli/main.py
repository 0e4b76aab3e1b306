"""The `edgetune` command.

    edgetune serve                      API + one worker, embedded SQLite by default
    edgetune worker [--device cuda:0]   a worker on EDGETUNE_DATABASE_URL
    edgetune db upgrade|downgrade REV|current
    edgetune keys create|list|revoke|secret
    edgetune recommend SPEC.yaml [--wait] [--json]
    edgetune jobs list|show ID|result ID|cancel ID|export
    edgetune plots JOB --out DIR           the job's four plots as PNG and SVG
    edgetune data fetch NAME|--all      MNIST or Fashion-MNIST into the data root, checked
    edgetune reproduce [ARGS]           benchmarks/reproduce_paper.py (source checkout)

`recommend`, `jobs` and `plots` talk to a running server over HTTP (--url, EDGETUNE_URL, default
http://127.0.0.1:8000), sending the API key of --api-key or EDGETUNE_API_KEY. Settings come from
EDGETUNE_* variables (see app/config.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from app.auth import AuthConfigError
from app.db import DatabaseNotMigrated
from edgetune.client import DEFAULT_URL
from edgetune.schemas import JobStatus
from edgetune_cli import data, local, remote
from edgetune_cli.output import CliError, fail


def _version() -> str:
    try:
        return version("edgetune")
    except PackageNotFoundError:
        return "0+unknown"


def reproduce_script() -> Path:
    # A checkout's benchmarks/ sits beside the packages; an installed wheel has no benchmarks/.
    return Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the paper reproduction with this Python, passing every argument through."""
    script = reproduce_script()
    if not script.is_file():
        raise CliError(
            f"{script} is missing: `edgetune reproduce` runs the benchmark script of a source "
            "checkout (git clone the repository, then `pip install -e '.[worker,benchmarks]'`)"
        )
    try:
        env = {**os.environ, "EDGETUNE_REPRODUCE_PROG": "edgetune reproduce"}
        command = [sys.executable, str(script), *args.script_args]
        return subprocess.run(command, env=env).returncode
    except KeyboardInterrupt:
        return 130


def _local_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the API and one worker (embedded default)")
    serve.add_argument("--host", help="bind address (default EDGETUNE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default EDGETUNE_PORT or 8000)")
    serve.add_argument("--device", help="the worker's torch device (default: cuda if present)")
    serve.set_defaults(handler=local.cmd_serve)

    worker = commands.add_parser("worker", help="run a worker: claim and run queued jobs")
    worker.add_argument("--device", help="torch device, e.g. cuda:0 (default: cuda if present)")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.set_defaults(handler=local.cmd_worker)

    db = commands.add_parser("db", help="database schema (Alembic migrations)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="migrate to the newest schema")
    db_upgrade.add_argument("revision", nargs="?", default="head")
    db_downgrade = db_commands.add_parser("downgrade", help="migrate back to REV (base = empty)")
    db_downgrade.add_argument("revision")
    db_commands.add_parser("current", help="show the database's revision")
    db.set_defaults(handler=local.cmd_db)

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
    keys.set_defaults(handler=local.cmd_keys)


def _remote_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        default=None,
        help=f"server URL (default EDGETUNE_URL, else {DEFAULT_URL} when a server answers "
        "there, else an embedded server for this command)",
    )
    url.add_argument(
        "--api-key", default=None, help="the X-API-Key to send (default EDGETUNE_API_KEY)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of tables")
    details = argparse.ArgumentParser(add_help=False)
    details.add_argument(
        "--details",
        action="store_true",
        help="also print the evidence: edge-of-chaos summary, validity flags, warnings, cost",
    )

    recommend = commands.add_parser(
        "recommend",
        parents=[url, as_json, details],
        help="submit a spec (YAML or JSON) and print the result",
    )
    recommend.add_argument("spec", help="path to the spec file")
    recommend.add_argument("--wait", action="store_true", help="follow progress until done")
    recommend.add_argument("--idempotency-key", help="resubmitting with this key returns the job")
    recommend.set_defaults(handler=remote.cmd_recommend)

    jobs = commands.add_parser("jobs", help="list, show, cancel jobs; their results, exported")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = job_commands.add_parser("list", parents=[url, as_json], help="newest jobs first")
    listing.add_argument("--status", choices=[s.value for s in JobStatus])
    listing.add_argument("--page-size", type=int, default=20)
    listing.add_argument("--page-token", help="next_page_token of the previous page")
    for name, text in (
        ("show", "one job: status and progress"),
        ("result", "a finished job's recommended hyperparameters, edge summary and validity"),
        ("cancel", "cancel one job (a running one stops at its next measurement)"),
    ):
        parents = [url, as_json, details] if name == "result" else [url, as_json]
        sub = job_commands.add_parser(name, parents=parents, help=text)
        sub.add_argument("id")
    export = job_commands.add_parser(
        "export", parents=[url], help="the results of many jobs as CSV (default) or JSON lines"
    )
    export.add_argument("--status", choices=[s.value for s in JobStatus], default="succeeded")
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    jobs.set_defaults(handler=remote.cmd_jobs)

    plots = commands.add_parser(
        "plots", parents=[url], help="download a job's plots (order, collapse, growth, trajectory)"
    )
    plots.add_argument("job", help="the job id")
    plots.add_argument("--out", required=True, help="folder for the PNG and SVG files")
    plots.set_defaults(handler=remote.cmd_plots)


def _data_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data_parser = commands.add_parser("data", help="datasets: download MNIST or Fashion-MNIST")
    data_commands = data_parser.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser(
        "fetch",
        help="download a dataset's four IDX files into the data root, checked against the "
        "published SHA-256 (mirror: EDGETUNE_DATA_MIRROR); files already there are kept",
    )
    which = fetch.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        choices=sorted(data.PUBLISHED),
        help="mnist or fashion-mnist",
    )
    which.add_argument("--all", action="store_true", help="both datasets")
    fetch.add_argument(
        "--into",
        metavar="DIR",
        help="the data root to write DIR/NAME/ in (default: the folder the worker reads, else "
        "the first writable entry of EDGETUNE_DATA_ROOT)",
    )
    fetch.set_defaults(handler=data.cmd_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    _local_commands(commands)
    _remote_commands(commands)
    _data_commands(commands)
    reproduce = commands.add_parser(
        "reproduce",
        add_help=False,  # --help goes to the script
        help="reproduce the paper's results (benchmarks/reproduce_paper.py; args passed on)",
    )
    reproduce.add_argument("script_args", nargs=argparse.REMAINDER)
    reproduce.set_defaults(handler=cmd_reproduce)
    return parser


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
