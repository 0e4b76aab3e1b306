"""In-process recommendations (edgetune.inprocess): a user's own factory and tensors, or a
DataLoader, give the answer a live server and worker give for the same module and data as
installed plugins (tests/plugins), same seed; real torch on a slice of Fashion-MNIST."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from edgetune_test_plugins.datasets import fashion_mnist_tensors
from edgetune_test_plugins.models import residual_cnn
from torch.utils.data import DataLoader, TensorDataset

from app.config import Settings
from app.schemas import Recommendation
from edgetune import inprocess, plugins
from edgetune.schemas import MODEL_PLUGINS
from tests.helpers import api_key, live_server
from tests.test_plugins import SPEC, RunningWorker, _wait


def _comparable(result: Recommendation) -> dict[str, Any]:
    """Everything but the wall time the probes took."""
    dumped = result.model_dump(mode="json")
    dumped["cost"].pop("probe_seconds")
    return dumped


@pytest.fixture
def one_thread() -> Any:
    # Tiny nets: more threads only synchronise, and both runs must use the same kernels.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def served(sqlite_settings: Settings, data_root: Path, one_thread: None) -> Recommendation:
    """SPEC (the test package's residual CNN on its Fashion-MNIST view) through HTTP → worker."""
    settings = sqlite_settings.model_copy(
        update={"data_root": str(data_root), "poll_seconds": 0.1}
    )
    worker = RunningWorker(settings)
    try:
        with (
            live_server(settings) as url,
            httpx.Client(base_url=url, headers=api_key(settings), timeout=30) as http,
        ):
            job = http.post("/v1/recommendations", json=SPEC).json()
            assert _wait(http, job["id"])["status"] == "succeeded"
            body = http.get(f"/v1/jobs/{job['id']}/recommendation").json()
    finally:
        worker.stop()
    return Recommendation.model_validate(body)


def test_in_process_gives_the_services_answer(served: Recommendation, data_root: Path) -> None:
    data = SPEC["dataset"]["kwargs"]
    x, y, x_test, y_test = fashion_mnist_tensors(data_roots=(data_root,), **data)
    factory = functools.partial(residual_cnn, **SPEC["model"]["kwargs"])
    budget = SPEC["budget"]
    common = {"epochs": budget["epochs"], "probe_fraction": budget["probe_fraction"]}
    seen: list[float] = []
    from_tensors = inprocess.recommend(
        model=factory,
        train=(x, y),
        test=(x_test, y_test),
        device="cpu",
        on_progress=lambda p: seen.append(p.fraction),
        **common,
    )
    assert served.hyperparameters is not None and seen and seen[-1] > 0.9
    assert _comparable(from_tensors) == _comparable(served)
    # A shuffling DataLoader: its dataset is what counts, not its batches or order.
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=50)
    from_loader = inprocess.recommend(
        model=factory, train=loader, test=test_loader, device="cpu", **common
    )
    assert _comparable(from_loader) == _comparable(served)
    # Another seed is another answer (the comparison above can fail).
    other = inprocess.recommend(
        model=factory, train=(x, y), test=(x_test, y_test), device="cpu", seed=1, **common
    )
    assert _comparable(other) != _comparable(served)
    # The factory was registered for the call only, and never as an installed plugin.
    assert inprocess.LOCAL_NAME not in plugins.installed(MODEL_PLUGINS)
    with pytest.raises(plugins.PluginNotFound):
        plugins.load(MODEL_PLUGINS, inprocess.LOCAL_NAME)


def test_a_halted_run_and_bad_data_say_so(data_root: Path, one_thread: None) -> None:
    x, y, _, _ = fashion_mnist_tensors(data_roots=(data_root,), train=256, test=1)
    with pytest.raises(inprocess.Halted):
        inprocess.recommend(
            model=residual_cnn, train=(x, y), epochs=1, device="cpu", on_progress=lambda p: False
        )
    with pytest.raises(ValueError, match="train: give"):
        inprocess.as_tensors((x, y, y))
    # Without a test split a fifth of train is held out, the rest stays in train.
    x_a, _, x_b, _ = inprocess._held_out(x, y)
    assert (len(x_a), len(x_b)) == (205, 51)
