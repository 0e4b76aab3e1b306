"""A recommendation → the optimizer and learning-rate scheduler a pipeline trains with.

Today every recommendation is constant-rate SGD (`Hyperparameters.torch_sgd_kwargs`); the
scheduler is then one that keeps the rate. Schedules (warm-up, cosine, linear decay) slot in as
more cases of `scheduler`, stepped the same way: once an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LRScheduler

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
    return torch.optim.SGD(params, **hyper.torch_sgd_kwargs.model_dump())


def scheduler(optimizer: Optimizer, hyper: Hyperparameters) -> LRScheduler:
    """The learning-rate schedule, stepped once an epoch. Constant: the only one recommended yet
    (factor 1 from the first epoch on: the rate is exactly torch_sgd_kwargs.lr throughout)."""
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def build_optimizer(
    model: nn.Module, recommendation: Recommendation | Hyperparameters
) -> tuple[Optimizer, LRScheduler]:
    hyper = hyperparameters(recommendation)
    opt = optimizer(model.parameters(), hyper)
    return opt, scheduler(opt, hyper)
