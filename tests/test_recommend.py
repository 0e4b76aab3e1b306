"""The recommendation engine on real torch runs over small real data (scikit-learn's digits)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from app.schemas import RecommendationSpec
from worker import recommend as R
from worker.data import Dataset, load_dataset

CPU = torch.device("cpu")


def _spec(**overrides: object) -> RecommendationSpec:
    base: dict[str, object] = {
        "model": {"type": "mlp", "hidden": [64], "activation": "tanh", "hidden_bias": False},
        "dataset": {"name": "digits"},
        "budget": {"epochs": 10, "probe_fraction": 0.5},
    }
    base.update(overrides)
    return RecommendationSpec.model_validate(base)


@pytest.fixture(scope="module")
def digits(data_root: Path) -> Dataset:
    return load_dataset(_spec().dataset, [data_root])


def _run(spec: RecommendationSpec, data: Dataset) -> dict[str, object]:
    plan = R.plan_probes(spec, data)
    results = {}
    for group in sorted({p.group for p in plan}):
        probes = [p for p in plan if p.group == group]
        for p, r in zip(probes, R.run_group(spec, data, probes, device=CPU), strict=True):
            results[p.key] = r
    return R.recommend(spec, data, plan, results, device=CPU, cost={})


def test_plan_is_deterministic_and_within_budget(digits: Dataset) -> None:
    spec = _spec()
    plan = R.plan_probes(spec, digits)
    assert plan == R.plan_probes(spec, digits)
    assert len({p.key for p in plan}) == len(plan)
    assert any(p.purpose == "decay" and p.config.weight_decay > 0 for p in plan)
    samples = sum(p.config.steps * p.config.batch_size for p in plan)
    full_run = spec.budget.epochs * digits.train_size
    assert samples <= spec.budget.probe_fraction * full_run * 1.05
    # Several effective learning rates, all in the stable range.
    effective = {
        p.config.learning_rate / ((1 - p.config.momentum) * p.config.batch_size)
        for p in plan
        if p.purpose == "growth"
    }
    assert len(effective) >= 3
    for p in plan:
        step = p.config.learning_rate / (1 - p.config.momentum)
        assert step <= R.max_step(p.config.batch_size) + 1e-12


def test_same_spec_and_seed_give_the_same_recommendation(digits: Dataset) -> None:
    spec = _spec()
    first, second = _run(spec, digits), _run(spec, digits)
    assert first["hyperparameters"] == second["hyperparameters"]
    assert first["hyperparameters"] is not None
    hp = first["hyperparameters"]
    assert isinstance(hp, dict)
    assert hp["paper_lambda"] == pytest.approx(hp["weight_decay"] / 2)
    assert hp["torch_sgd_kwargs"] == {
        "lr": hp["learning_rate"],
        "momentum": hp["momentum"],
        "weight_decay": hp["weight_decay"],
    }
    edge = first["edge"]
    assert isinstance(edge, dict)
    assert edge["k"]["value"] > 0
    assert 0.0 < edge["initial"] < 1.0


def test_fixed_knobs_are_respected_exactly(digits: Dataset) -> None:
    spec = _spec(
        optimizer={"learning_rate": 0.013, "momentum": 0.7, "batch_size": 16, "weight_decay": 0.0}
    )
    rec = _run(spec, digits)
    hp = rec["hyperparameters"]
    assert isinstance(hp, dict)
    assert (hp["learning_rate"], hp["momentum"], hp["batch_size"], hp["weight_decay"]) == (
        0.013,
        0.7,
        16,
        0.0,
    )


def test_unreachable_edge_with_fixed_knobs_is_said_plainly(digits: Dataset) -> None:
    # A tiny fixed learning rate and no decay: the edge lies far beyond a 2-epoch budget.
    spec = _spec(
        optimizer={"learning_rate": 1e-4, "momentum": 0.0, "batch_size": 64, "weight_decay": 0.0},
        budget={"epochs": 2, "probe_fraction": 1.0},
    )
    rec = _run(spec, digits)
    validity = rec["validity"]
    assert isinstance(validity, dict)
    if rec["hyperparameters"] is None:
        assert validity["reason"]
    else:
        assert validity["flags"]["edge_unreachable"] is True
        assert any("after the budget" in w or "cannot" in w for w in validity["warnings"])


@pytest.mark.parametrize(
    "model",
    [
        {
            "type": "mlp",
            "hidden": [48, 48, 48],
            "activation": "relu",
            "hidden_bias": True,
            "init": {"scheme": "edge", "J": 0.8},
        },
        {
            "type": "mlp",
            "hidden": [96, 48],
            "activation": "tanh",
            "init": {"scheme": "edge", "J": 0.5},
        },
        {
            "type": "cnn",
            "blocks": [{"channels": 8, "kernel": 3}, {"channels": 8, "kernel": 3, "pool": 2}],
            "activation": "relu",
            "init": {"scheme": "edge", "J": 0.8},
        },
    ],
    ids=["relu-mlp-3", "tanh-mlp-2-nonsquare", "cnn"],
)
def test_architectures_beyond_the_paper(digits: Dataset, model: dict[str, object]) -> None:
    spec = _spec(model=model)
    rec = _run(spec, digits)
    validity = rec["validity"]
    assert isinstance(validity, dict)
    assert validity["flags"]["outside_validated_regime"] or rec["hyperparameters"] is None
    if rec["hyperparameters"] is None:
        assert isinstance(validity["reason"], str) and len(validity["reason"]) > 20
    else:
        edge = rec["edge"]
        assert isinstance(edge, dict)
        assert edge["order_parameter"]["name"] == "chi"
        hp = rec["hyperparameters"]
        assert isinstance(hp, dict)
        assert hp["learning_rate"] > 0 and 0 <= hp["momentum"] < 1 and hp["batch_size"] >= 1


def test_chaotic_start_gives_a_reason_not_a_number(digits: Dataset) -> None:
    spec = _spec(
        model={
            "type": "mlp",
            "hidden": [64],
            "activation": "tanh",
            "init": {"scheme": "edge", "J": 2.0},
        }
    )
    rec = _run(spec, digits)
    assert rec["hyperparameters"] is None
    validity = rec["validity"]
    assert isinstance(validity, dict)
    assert "chaotic" in validity["reason"]


def test_choose_config_solves_the_growth_law() -> None:
    train = 55_000
    k, c = 11.0, 2.0 * train  # the simple theory: c_D = 2S
    # Decay free: no decay, and the edge is met exactly at the end of the budget, at the
    # largest verified batch size whose step stays stable.
    spec = _spec(budget={"epochs": 20, "probe_fraction": 1.0})
    choice = R.choose_config(
        spec, k=k, c=c, y0=0.25, train_size=train, batch_candidates=[32, 64, 128]
    )
    assert choice.weight_decay == 0.0
    assert choice.batch_size == 128
    assert R.edge_epoch(choice, 0.25) == pytest.approx(20.0)
    assert math.isclose(choice.growth * 20, 0.75)
    assert choice.learning_rate / (1 - choice.momentum) <= R.max_step(choice.batch_size) + 1e-12
    # A user-fixed decay at the theory's edge value saturates: D = A, within the gap at the end.
    fixed = _spec(
        optimizer={"weight_decay": k / (2 * train)}, budget={"epochs": 20, "probe_fraction": 1}
    )
    choice = R.choose_config(fixed, k=k, c=c, y0=0.25, train_size=train, batch_candidates=[32])
    assert choice.growth == pytest.approx(choice.decay_rate)
    y_end = R.fit.predict_trajectory([choice.epochs], choice.growth, choice.decay_rate, 0.25)[0]
    assert y_end == pytest.approx(1 - R.SATURATION_GAP, abs=1e-6)
    # A fixed decay too strong for the edge is said plainly.
    strong = _spec(
        optimizer={"weight_decay": 4 * k / (2 * train)}, budget={"epochs": 20, "probe_fraction": 1}
    )
    choice = R.choose_config(strong, k=k, c=c, y0=0.25, train_size=train, batch_candidates=[32])
    assert any("cannot" in w for w in choice.warnings)
