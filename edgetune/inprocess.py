"""In-process recommendations, no server: a notebook's own module factory and data, the engine
the service runs (`worker.recommend.run`), the same typed `Recommendation` back.

    import edgetune.inprocess

    result = edgetune.inprocess.recommend(
        model=my_factory,            # build(*, input_shape, num_classes) -> nn.Module
        train=(x_train, y_train),    # tensors, a map-style Dataset, or a DataLoader
        test=(x_test, y_test),
        epochs=20,
    )

The factory and the data go through the plugin path the service uses for installed plugins
(edgetune.nets PluginNet, worker.data's plugin datasets: validation carved from train with the
fixed split seed), registered for this call only (`edgetune.plugins.local`). So the same factory,
data and seed give the same answer as a worker given the same module and data as entry-point
plugins (tests/test_inprocess.py checks it against a live server and worker).

The only module of the `edgetune` package that imports the worker (pyproject.toml's contracts
allow exactly this); the client and the schemas stay torch-free and worker-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data import Dataset as TorchDataset

from edgetune import plugins
from edgetune.schemas import (
    DATASET_PLUGINS,
    MODEL_PLUGINS,
    BudgetSpec,
    CNNSpec,
    DatasetSpec,
    MLPSpec,
    OptimizerSpec,
    PluginModelSpec,
    Recommendation,
    RecommendationSpec,
    TorchvisionSpec,
)
from worker.data import SPLIT_SEED, load_dataset
from worker.probe import pick_device
from worker.recommend import Progress
from worker.recommend import run as run_engine

# The name the call's factory and data are registered under (in this context only).
LOCAL_NAME = "inprocess"
# Without a test split, this share of `train` is held out as the test split (as for npz data).
TEST_FRACTION = 0.2

ModelFactory: TypeAlias = Callable[..., nn.Module]
Data: TypeAlias = "tuple[Any, Any] | TorchDataset[Any] | DataLoader[Any]"
BuiltinModel = MLPSpec | CNNSpec | TorchvisionSpec | PluginModelSpec


class Halted(RuntimeError):
    """`on_progress` returned False: the run stopped before it had a recommendation."""


def _stacked(items: list[Any], what: str) -> tuple[Tensor, Tensor]:
    try:
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    except (TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise ValueError(f"{what}: items must be (x, y) pairs of equal-shaped x: {exc}") from exc
    return x, y


def as_tensors(data: Data, what: str = "train") -> tuple[Tensor, Tensor]:
    """(x, y) of tensors, a map-style Dataset of (x, y) items, or a DataLoader, as two tensors.

    A DataLoader over a map-style Dataset gives its dataset in index order: the engine draws its
    own batches and data order from the seed, so the loader's batching and shuffling do not
    change the answer. An iterable-style loader is read once, batch by batch."""
    if isinstance(data, tuple | list):
        if len(data) != 2:
            raise ValueError(f"{what}: give (x, y), not a sequence of {len(data)}")
        return torch.as_tensor(data[0]), torch.as_tensor(data[1])
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            batches = list(data)
            x = torch.cat([torch.as_tensor(b[0]) for b in batches])
            return x, torch.cat([torch.as_tensor(b[1]) for b in batches])
        data = data.dataset
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__"):
        raise ValueError(f"{what}: an iterable-style Dataset needs a DataLoader around it")
    return _stacked([data[i] for i in range(len(data))], what)


def _held_out(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): TEST_FRACTION of `train` held out with the fixed split
    seed the engine carves every split with."""
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(x)))
    n_test = int(round(len(x) * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def spec_for(
    model: BuiltinModel | None,
    *,
    epochs: float,
    optimizer: OptimizerSpec | Mapping[str, Any] | None,
    probe_fraction: float,
    validation_fraction: float,
    seed: int,
    verify: bool,
) -> RecommendationSpec:
    """The RecommendationSpec a call runs: the local plugin's names for a factory and the data."""
    return RecommendationSpec(
        model=model if model is not None else PluginModelSpec(name=LOCAL_NAME, kwargs={}),
        dataset=DatasetSpec(
            name="plugin", plugin=LOCAL_NAME, validation_fraction=validation_fraction, kwargs={}
        ),
        optimizer=OptimizerSpec.model_validate(optimizer or {}),
        budget=BudgetSpec(epochs=epochs, probe_fraction=probe_fraction),
        seed=seed,
        verify=verify,
    )


def recommend(
    *,
    model: ModelFactory | BuiltinModel,
    train: Data,
    test: Data | None = None,
    epochs: float = 20,
    optimizer: OptimizerSpec | Mapping[str, Any] | None = None,
    probe_fraction: float = 0.2,
    validation_fraction: float = 1 / 12,
    seed: int = 0,
    verify: bool = False,
    device: str | torch.device | None = None,
    on_progress: Callable[[Progress], bool | None] | None = None,
) -> Recommendation:
    """The recommendation for `model` trained on `train`, computed here by the service's engine.

    `model` is a factory `build(*, input_shape, num_classes) -> nn.Module` (as an `edgetune.models`
    plugin; wrap keyword arguments in functools.partial) or one of edgetune's model specs.
    `train`/`test` are (x, y) tensors or arrays, map-style Datasets of (x, y) items, or
    DataLoaders; without `test`, a fifth of `train` is held out. Validation is carved from
    `train` (`validation_fraction`). `optimizer` is an OptimizerSpec or its fields (fixed
    values; the rest is recommended). `on_progress(progress)` sees the engine's progress;
    returning False stops the run (Halted). Device: the first GPU if any, unless given."""
    x, y = as_tensors(train, "train")
    parts = (x, y, *as_tensors(test, "test")) if test is not None else _held_out(x, y)
    builtin = model if isinstance(model, BuiltinModel) else None
    spec = spec_for(
        builtin,
        epochs=epochs,
        optimizer=optimizer,
        probe_fraction=probe_fraction,
        validation_fraction=validation_fraction,
        seed=seed,
        verify=verify,
    )

    def data_factory(**_: Any) -> tuple[Tensor, ...]:
        return parts

    factories: dict[tuple[str, str], Callable[..., Any]] = {
        (DATASET_PLUGINS, LOCAL_NAME): data_factory
    }
    if builtin is None:
        assert callable(model)
        factories[(MODEL_PLUGINS, LOCAL_NAME)] = model
    chosen = pick_device(str(device) if device is not None else None)
    with plugins.local(factories):
        dataset = load_dataset(spec.dataset, [], spec.seed).to(chosen)
        result = run_engine(
            spec,
            dataset,
            device=chosen,
            on_progress=None if on_progress is None else (lambda p: on_progress(p) is not False),
        )
    if result is None:
        raise Halted("on_progress returned False before the recommendation was made")
    return result
