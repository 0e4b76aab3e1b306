"""Learning-rate schedules: the shapes, the growth law's integral of them, the probe engine's
scheduled runs against PyTorch's own optimizer and scheduler, and a scheduled recommendation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgetune
from app.schemas import RecommendationSpec
from edgetune import schedules
from worker import law, recommend
from worker.data import Dataset, load_dataset
from worker.probe import ProbeConfig, run_population

CPU = torch.device("cpu")
SPEC = {
    "model": {"type": "mlp", "hidden": [64], "activation": "tanh", "hidden_bias": False},
    "dataset": {"name": "digits"},
    "budget": {"epochs": 10},
}


@pytest.fixture(scope="module")
def digits(data_root: Path) -> Dataset:
    return load_dataset(RecommendationSpec.model_validate(SPEC).dataset, [data_root])


@pytest.mark.parametrize("name", ["cosine", "warmup-cosine", "linear-decay"])
def test_decaying_schedules_average_half_their_peak(name: schedules.Schedule) -> None:
    assert schedules.mean_multiplier(name, 20.0, 2.0) == pytest.approx(0.5, abs=1e-6)
    assert schedules.multiplier(name, 20.0, 20.0, 2.0) == pytest.approx(0.0, abs=1e-12)
    assert schedules.mean_multiplier("constant", 20.0) == 1.0
    # A growth law A ∝ η² weighs the high-rate part more: the mean of m² is below that of m.
    assert schedules.mean_multiplier(name, 20.0, 2.0, exponent=2.0) < 0.5


def test_warmup_rises_linearly_to_the_peak() -> None:
    assert schedules.multiplier("warmup-cosine", 0.0, 10.0, 2.0) == 0.0
    assert schedules.multiplier("warmup-cosine", 1.0, 10.0, 2.0) == pytest.approx(0.5)
    assert schedules.multiplier("warmup-cosine", 2.0, 10.0, 2.0) == pytest.approx(1.0)
    assert schedules.multiplier("warmup-cosine", 6.0, 10.0, 2.0) == pytest.approx(0.5)


@pytest.mark.parametrize(("name", "nesterov"), [("warmup-cosine", False), ("cosine", True)])
def test_a_scheduled_probe_trains_as_torch_does_with_build_optimizer(
    digits: Dataset, name: schedules.Schedule, nesterov: bool
) -> None:
    """The engine's scheduled run and a plain loop with edgetune.build_optimizer's scheduler
    follow the same rates, so the same weights come out (float32 rounding apart)."""
    epochs, batch = 2.0, 64
    per_epoch = digits.train_size // batch
    config = ProbeConfig(
        0.05, 0.9, 0.0, batch, 7, round(epochs * per_epoch), nesterov=nesterov,
        schedule=name, schedule_epochs=epochs, warmup_epochs=0.5,
    )  # fmt: skip
    (engine,) = run_population(
        RecommendationSpec.model_validate(SPEC).model, digits, [config], device=CPU,
        measure_every=0, eval_every=0, keep_params=True,
    )  # fmt: skip
    assert engine.params is not None
    spec = RecommendationSpec.model_validate(SPEC)
    model = edgetune.build_model(spec)
    hyper = edgetune.schemas.Hyperparameters(
        learning_rate=0.05, momentum=0.9, batch_size=batch, weight_decay=0.0, epochs=epochs,
        paper_lambda=0.0,
        torch_sgd_kwargs={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": nesterov},
        schedule={"name": name, "warmup_epochs": 0.5, "steps_per_epoch": per_epoch,
                  "total_steps": round(epochs * per_epoch), "mean_multiplier": 0.5},
    )  # fmt: skip
    from worker.probe import init_model  # the probe's own initial weights, seed 7

    model.load_state_dict(init_model(spec.model, digits, 7).state_dict())
    optimizer, scheduler = edgetune.build_optimizer(model, hyper)
    order = torch.Generator().manual_seed(7 + 1)  # the probe's data-order stream
    step = 0
    while step < config.steps:
        perm = torch.randperm(digits.train_size, generator=order)
        for i in range(per_epoch):
            if step == config.steps:
                break
            idx = perm[i * batch : (i + 1) * batch]
            logits = model(digits.x_train[idx])
            loss = torch.nn.functional.cross_entropy(logits, digits.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-3)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, engine.params[key], atol=2e-4), key


def test_the_law_puts_a_schedules_peak_where_its_integral_meets_the_edge() -> None:
    k, y0 = 11.0, 0.25  # 40 epochs: the peak stays inside the law's bound on η/(1−α)
    constant = RecommendationSpec.model_validate(
        {**SPEC, "budget": {"epochs": 40}, "optimizer": {"schedule": "constant"}}
    )
    scheduled = RecommendationSpec.model_validate(
        {**SPEC, "budget": {"epochs": 40}, "optimizer": {"schedule": "warmup-cosine"}}
    )
    base = law.choose_config(constant, k=k, c=None, y0=y0, train_size=50_000, batch_candidates=[32])
    peak = law.choose_config(
        scheduled, k=k, c=None, y0=y0, train_size=50_000, batch_candidates=[32]
    )
    assert peak.learning_rate == pytest.approx(2 * base.learning_rate, rel=1e-4)
    _, y = law.predict(peak, y0)
    assert y[-1] == pytest.approx(1.0, abs=1e-3)  # the edge at the end, as for constant
    assert not peak.capped
    # The decay's flat tail adds little: within 1e-4 of the edge in the last twentieth.
    t_edge = law.edge_epoch(peak, y0)
    assert t_edge is not None and 38.0 <= t_edge <= 40.0
    # With A ∝ η^1.5 the peak is set by the mean of m^1.5, and still meets the edge at the end.
    steep = law.choose_config(
        scheduled, k=k, c=None, y0=y0, train_size=50_000, batch_candidates=[32],
        growth_law=lambda eta, a, b: k * (eta / ((1 - a) * b)) ** 1.5 / 3.1e-3**0.5,
        rate_exponent=1.5,
    )  # fmt: skip
    _, y_steep = law.predict(steep, y0)
    assert y_steep[-1] == pytest.approx(1.0, abs=1e-3)


def test_a_scheduled_recommendation_carries_its_schedule(digits: Dataset) -> None:
    spec = RecommendationSpec.model_validate(
        {**SPEC, "optimizer": {"schedule": "warmup-cosine", "warmup_epochs": 1}}
    )
    rec = recommend.run(spec, digits, device=CPU)
    assert rec is not None and rec.hyperparameters is not None
    hp = rec.hyperparameters
    assert hp.schedule is not None and hp.schedule.name == "warmup-cosine"
    assert hp.schedule.warmup_epochs == 1.0
    assert hp.schedule.steps_per_epoch == digits.train_size // hp.batch_size
    assert hp.schedule.mean_multiplier == pytest.approx(0.5, abs=1e-6)
    # The probes bracket the schedule's peak, not the constant answer.
    rates = [p.effective_rate for p in rec.edge.probes]
    assert min(rates) * (1 - 1e-6) <= hp.effective_rate <= max(rates) * (1 + 1e-6)


def test_a_warmup_as_long_as_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        RecommendationSpec.model_validate(
            {**SPEC, "optimizer": {"schedule": "warmup-cosine", "warmup_epochs": 10}}
        )


def test_a_free_schedule_is_warmup_cosine_with_a_twentieth_warm_up() -> None:
    free = RecommendationSpec.model_validate({**SPEC, "budget": {"epochs": 40}})
    assert law.run_schedule(free) == ("warmup-cosine", 2.0)
    fixed = RecommendationSpec.model_validate(
        {**SPEC, "optimizer": {"schedule": "cosine", "warmup_epochs": 3}}
    )
    assert law.run_schedule(fixed) == ("cosine", 0.0)  # a warm-up only where the shape has one
    # The recommendation carries the warm-up it was solved for, and the peak is the mean's 1/0.5.
    choice = law.choose_config(
        free, k=11.0, c=None, y0=0.25, train_size=50_000, batch_candidates=[32]
    )
    assert (choice.schedule, choice.warmup_epochs) == ("warmup-cosine", 2.0)
