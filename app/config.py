"""Settings: built once at the edge (`Settings()` in the CLI or the caller of create_app) and passed
down. Nothing here runs at import time; every field can be set by an `EDGETUNE_<NAME>` variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import model_validator
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGETUNE_", extra="ignore")

    # Empty = the embedded default: a SQLite file `<data_dir>/edgetune.db` that migrates itself.
    database_url: str = ""
    data_dir: Path = Path(".edgetune")
    # os.pathsep-separated folders that dataset paths must lie under (EDGETUNE_DATA_ROOT).
    data_root: str = ""
    host: str = "127.0.0.1"
    port: int = 8000

    # Queue: a running job whose lease is not renewed for lease_seconds goes back to the queue.
    lease_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    poll_seconds: float = 1.0

    # Limits on what one request may ask for (422s that name the field and the limit).
    max_parameters: int = 20_000_000
    max_probe_fraction: float = 2.0
    max_budget_epochs: float = 200
    max_train_samples: int = 1_000_000
    max_body_bytes: int = 1_000_000

    # True for the SQLite default: the API and worker migrate it on start instead of refusing it.
    embedded: bool = False

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

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def data_roots(self) -> list[Path]:
        if self.data_root:
            return [Path(p).expanduser() for p in self.data_root.split(os.pathsep) if p]
        return default_data_roots()
