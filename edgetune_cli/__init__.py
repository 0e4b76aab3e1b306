"""The `edgetune` command line: the composition root above `app` (the API), `worker` (the
probing worker) and `edgetune` (the client). Local commands (serve, worker, db, keys) start the
service's parts here; remote ones (recommend, jobs, plots) go through `edgetune.Client`."""

import sys

# What `pip install edgetune` leaves out (the client alone) and the command needs.
SERVER_PACKAGES = frozenset(
    {
        "fastapi",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "pydantic_settings",
        "rich",
        "prometheus_client",
        "fastapi_offline",
    }
)


def run() -> int:
    """The console script: the command, or one line saying which extra to install."""
    try:
        from edgetune_cli.main import main
    except ModuleNotFoundError as exc:
        if exc.name not in SERVER_PACKAGES:
            raise
        print(
            f"error: the edgetune command needs the service's packages ({exc.name} is not "
            "installed): pip install 'edgetune[server]' (or 'edgetune[worker]' to run probes); "
            "the client alone is `from edgetune import Client`",
            file=sys.stderr,
        )
        return 1
    return main()
