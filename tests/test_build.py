"""`edgetune.build_model` / `edgetune.build_optimizer`: the module a pipeline gets is the one the
probe engine starts its probes from, parameter for parameter, and the optimizer is the
recommended one. Compared with the worker's own code (worker.plan, worker.probe) on real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgetune
from edgetune.schemas import FIXED_SHAPES, Recommendation, RecommendationSpec, known_shape
from worker.data import load_dataset
from worker.plan import plan_probes
from worker.probe import init_model

REPO = Path(__file__).resolve().parents[1]

SPECS = {
    "mlp-digits": {"model": {"type": "mlp", "hidden": [64]}, "dataset": {"name": "digits"}},
    "cnn-digits": {
        "model": {"type": "cnn", "blocks": [{"channels": 4, "pool": 2}], "hidden": [16]},
        "dataset": {"name": "digits"},
        "seed": 3,
    },
    "mlp-synthetic": {
        "model": {"type": "mlp", "hidden": [16, 16], "activation": "relu"},
        "dataset": {"name": "synthetic", "synthetic_samples": 256, "synthetic_features": 8},
        "seed": 7,
    },
    # BatchNorm: the engine trains it on batch statistics, so the built module does too.
    "torchvision-fmnist": {
        "model": {"type": "torchvision", "name": "resnet18"},
        "dataset": {"name": "fashion-mnist", "max_train_samples": 64},
    },
}


def _first_probe_model(spec: RecommendationSpec, data_root: Path) -> torch.nn.Module:
    dataset = load_dataset(spec.dataset, [data_root], spec.seed)
    first = plan_probes(spec, dataset)[0]
    return init_model(spec.model, dataset, first.config.seed)


def _assert_same(built: torch.nn.Module, probed: torch.nn.Module) -> None:
    """Same class, same layers, every parameter and buffer equal."""
    assert type(built) is type(probed) and str(built) == str(probed)
    want = {**dict(probed.named_parameters()), **dict(probed.named_buffers())}
    got = {**dict(built.named_parameters()), **dict(built.named_buffers())}
    assert list(got) == list(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("name", SPECS)
def test_build_model_is_the_module_the_first_probe_trained(name: str, data_root: Path) -> None:
    spec = RecommendationSpec.model_validate(SPECS[name])
    probed = _first_probe_model(spec, data_root)
    built = edgetune.build_model(SPECS[name])
    _assert_same(built, probed)
    # Another seed is another model: the comparison above can fail.
    other = edgetune.build_model({**SPECS[name], "seed": spec.seed + 1})
    assert not torch.equal(next(other.parameters()), next(built.parameters()))


def test_build_model_reads_a_yaml_spec_and_leaves_the_callers_rng_alone(data_root: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    built = edgetune.build_model(REPO / "examples" / "digits_small.yaml")
    assert torch.equal(torch.rand(3), expected)
    spec = edgetune.load_spec(REPO / "examples" / "digits_small.yaml")
    probed = _first_probe_model(spec, data_root)
    _assert_same(built, probed)


def test_data_known_only_from_its_files_needs_the_shape_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2, 3, 3)).astype(np.float32), np.arange(60) % 3
    np.savez(tmp_path / "small.npz", x=x, y=y)
    raw = {"model": {"type": "mlp", "hidden": [8]}, "dataset": {"name": "npz", "path": "small.npz"}}
    with pytest.raises(ValueError, match="input_shape"):
        edgetune.build_model(raw)
    spec = RecommendationSpec.model_validate(raw)
    probed = _first_probe_model(spec, tmp_path)
    built = edgetune.build_model(raw, input_shape=(2, 3, 3), num_classes=3)
    _assert_same(built, probed)


@pytest.mark.parametrize("name", [*FIXED_SHAPES, "synthetic"])
def test_the_torch_free_shape_table_is_what_the_loader_gives(name: str, data_root: Path) -> None:
    spec = RecommendationSpec.model_validate({"model": {}, "dataset": {"name": name}}).dataset
    dataset = load_dataset(spec, [data_root])
    assert known_shape(spec) == (dataset.input_shape, dataset.num_classes)


def _recommendation(hyperparameters: dict | None) -> Recommendation:
    edge = {"order_parameter": {"name": "J2", "description": "J²"}}
    validity = {
        "ok": hyperparameters is not None,
        "reason": "no probe reached the edge",
        "flags": {},
        "warnings": [],
    }
    return Recommendation.model_validate(
        {"hyperparameters": hyperparameters, "edge": edge, "validity": validity}
    )


HYPER = {
    "learning_rate": 0.05,
    "momentum": 0.9,
    "batch_size": 32,
    "weight_decay": 1e-4,
    "epochs": 10,
    "paper_lambda": 5e-5,
    "torch_sgd_kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
}


def test_build_optimizer_is_the_recommended_sgd_at_a_constant_rate() -> None:
    model = edgetune.build_model(SPECS["mlp-digits"])
    optimizer, scheduler = edgetune.build_optimizer(model, _recommendation(HYPER))
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 1e-4)
    assert [p.data_ptr() for p in group["params"]] == [p.data_ptr() for p in model.parameters()]
    for _ in range(3):  # an epoch: steps, then the schedule's step
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [0.05] and group["lr"] == 0.05
    with pytest.raises(ValueError, match="no probe reached the edge"):
        edgetune.build_optimizer(model, _recommendation(None))


def test_import_edgetune_does_not_import_torch_until_build_model_is_called() -> None:
    code = (
        "import sys, edgetune\n"
        "assert callable(edgetune.build_model) and callable(edgetune.build_optimizer)\n"
        "assert 'torch' not in sys.modules, 'import edgetune imported torch'\n"
        "edgetune.build_model({'model': {'hidden': [8]}, 'dataset': {'name': 'digits'}})\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
