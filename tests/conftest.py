import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder: EDGETUNE_DATA_ROOT, else <repo>/../shared/datasets."""
    env = os.environ.get("EDGETUNE_DATA_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
