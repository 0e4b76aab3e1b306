"""Settings: built once at the edge (`Settings()` in the CLI or the caller of create_app) and passed
down. Nothing here runs at import time; every field can be set by an `EDGETUNE_<NAME>` variable.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The repository root when running from a checkout (app/ lives directly under it).
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_roots() -> list[Path]:
    """`../shared/datasets` beside the checkout (or the working directory) when it exists."""
    for base in (REPO_ROOT, Path.cwd()):
        candidate = (base / ".." / "shared" / "datasets").resolve()
        if candidate.is_dir():
            return [candidate]
    return []


def default_data_dir() -> Path:
    """The per-user data directory, the same from any working directory: a job that `edgetune
    recommend` queued in one folder is listed by `edgetune jobs list` run from another.

    $XDG_DATA_HOME/edgetune where that is set (on any platform, so tests and users can move it),
    else the platform's per-user data folder: ~/.local/share, ~/Library/Application Support,
    %LOCALAPPDATA%. EDGETUNE_DATA_DIR overrides all of this.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is invalid, ignored
        return Path(xdg) / "edgetune"
    try:
        home = Path.home()
    except (RuntimeError, KeyError):
        # No home at all (a container user missing from /etc/passwd): the working directory,
        # as before, rather than failing a command that may never touch the data dir.
        return Path(".edgetune").resolve()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "edgetune"
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "edgetune"
    return home / ".local" / "share" / "edgetune"


def is_loopback_host(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGETUNE_", extra="ignore")

    # Empty = the embedded default: a SQLite file `<data_dir>/edgetune.db` that migrates itself.
    database_url: str = ""
    # Per user, not per working directory (default_data_dir).
    data_dir: Path = Field(default_factory=default_data_dir)
    # os.pathsep-separated folders that dataset paths must lie under (EDGETUNE_DATA_ROOT).
    data_root: str = ""
    # Where `edgetune data fetch` downloads MNIST / Fashion-MNIST from: one folder URL, {name}
    # replaced by the dataset's name ("" = each dataset's official mirror, app/fetch.py).
    data_mirror: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    # Queue: a running job whose lease is not renewed for lease_seconds goes back to the queue.
    lease_seconds: float = 60.0
    max_attempts: int = 3
    poll_seconds: float = 1.0

    # Limits on what one request may ask for (422s that name the field and the limit).
    max_parameters: int = 20_000_000
    # Memory a worker may need for one job, estimated before it is queued (app/limits.py: the
    # data as float32 plus the activations of a population of probes): over it, a 422.
    max_job_memory_bytes: int = 16 * 2**30
    max_probe_fraction: float = 2.0
    max_budget_epochs: float = 200
    max_train_samples: int = 1_000_000
    max_body_bytes: int = 1_000_000

    # The HTTP server (app.main.ProblemHttpProtocol, in every launch): a request line plus
    # headers over max_header_bytes is refused with 431; one not complete header_timeout_seconds
    # after the connection opened (or the request's first byte) closes the connection; past
    # max_connections open connections, requests are answered 503 (uvicorn's limit_concurrency).
    max_header_bytes: int = 64 * 1024
    header_timeout_seconds: float = 10.0
    max_connections: int = 1000

    # True for the SQLite default: the API and worker migrate it on start instead of refusing it.
    embedded: bool = False

    # API keys (X-API-Key). "" = the default: "disabled" for the embedded default on a loopback
    # host (one person on one machine, tenant "default"), "required" everywhere else. Disabled
    # auth anywhere else is refused (app.auth.check_auth_settings).
    auth: Literal["", "required", "disabled"] = ""

    # Webhooks: callback_url deliveries, retried after webhook_backoff_seconds · 2^(attempt-1),
    # capped at webhook_backoff_max_seconds, until webhook_max_attempts.
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 2.0
    webhook_backoff_max_seconds: float = 3600.0
    # One delivery attempt's overall deadline: resolve + connect + send + the response head,
    # however slowly the receiver sends its bytes; past it the connection is closed and the
    # attempt counts as failed (retried with the backoff above).
    webhook_timeout_seconds: float = 10.0
    # Outbound webhooks to private, loopback and link-local addresses are refused unless this is
    # set (a callback_url must not let a tenant probe the service's own network).
    webhook_allow_private: bool = False

    # GET /metrics: a scrape within this many seconds of the last collection gets its result, so
    # any number of scrapers cost one set of aggregate queries per interval (0: every scrape that
    # does not overlap another collects afresh).
    metrics_cache_seconds: float = 5.0

    # "json": one JSON object per log line (time, level, logger, message, job_id).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="before")
    @classmethod
    def _embedded_default(cls, data: Any) -> Any:
        # An explicit database is somebody else's to migrate (`edgetune db upgrade`); only the
        # zero-set-up default is migrated implicitly.
        if isinstance(data, dict) and not data.get("database_url") and "embedded" not in data:
            data = {**data, "embedded": True}
        return data

    @model_validator(mode="after")
    def _fill_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'edgetune.db').resolve()}"
        return self

    @model_validator(mode="after")
    def _default_auth(self) -> Settings:
        if not self.auth:
            local = self.embedded and is_loopback_host(self.host)
            self.auth = "disabled" if local else "required"
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def data_roots(self) -> list[Path]:
        if self.data_root:
            return [Path(p).expanduser() for p in self.data_root.split(os.pathsep) if p]
        # Else ../shared/datasets where it exists, and always <data_dir>/datasets: where
        # `edgetune data fetch` puts the files on a machine with no data root configured.
        return [*default_data_roots(), (self.data_dir / "datasets").resolve()]
