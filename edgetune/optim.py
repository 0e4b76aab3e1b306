"""A recommendation → the optimizer and learning-rate scheduler a pipeline trains with.

The optimizer is SGD with `Hyperparameters.torch_sgd_kwargs`, or AdamW with `torch_adamw_kwargs`.
The scheduler follows the recommended schedule's shape (edgetune/schedules.py, the one the growth
law integrated) and is stepped once per optimizer step; for a constant rate it keeps the rate (a
result from before schedules carries no schedule and is constant).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LambdaLR, LRScheduler

from edgetune.schedules import multiplier
from edgetune.schemas import Hyperparameters, Recommendation


def hyperparameters(recommendation: Recommendation | Hyperparameters) -> Hyperparameters:
    """The recommended hyperparameters; ValueError (with the engine's reason) when there are
    none because the probes found no configuration that reaches the edge."""
    if isinstance(recommendation, Hyperparameters):
        return recommendation
    if recommendation.hyperparameters is None:
        raise ValueError(f"no hyperparameters were recommended: {recommendation.validity.reason}")
    return recommendation.hyperparameters


def optimizer(params: Iterable[nn.Parameter], hyper: Hyperparameters) -> Optimizer:
    if hyper.torch_adamw_kwargs is not None:
        return torch.optim.AdamW(params, **hyper.torch_adamw_kwargs.model_dump())
    if hyper.torch_sgd_kwargs is None:
        raise ValueError("the hyperparameters carry no optimizer arguments")
    return torch.optim.SGD(params, **hyper.torch_sgd_kwargs.model_dump())


def scheduler(
    optimizer: Optimizer, hyper: Hyperparameters, steps_per_epoch: int | None = None
) -> LRScheduler:
    """The learning-rate schedule, stepped once per optimizer step: the rate at step s is the
    peak times multiplier(s / steps_per_epoch). `steps_per_epoch` defaults to the probes' count
    (train size // batch size); pass your loader's length if it differs."""
    schedule = hyper.schedule
    if schedule is None or schedule.name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    per_epoch = steps_per_epoch or schedule.steps_per_epoch
    name, epochs, warmup = schedule.name, hyper.epochs, schedule.warmup_epochs
    return LambdaLR(optimizer, lambda step: multiplier(name, step / per_epoch, epochs, warmup))


def build_optimizer(
    model: nn.Module,
    recommendation: Recommendation | Hyperparameters,
    *,
    steps_per_epoch: int | None = None,
) -> tuple[Optimizer, LRScheduler]:
    hyper = hyperparameters(recommendation)
    opt = optimizer(model.parameters(), hyper)
    return opt, scheduler(opt, hyper, steps_per_epoch)
