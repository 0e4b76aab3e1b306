"""edgetune's Python client: the import path pipelines use.

    import edgetune

    with edgetune.Client("http://127.0.0.1:8000") as client:
        result = client.recommend("examples/digits_small.yaml", timeout=600)
    model = edgetune.build_model("examples/digits_small.yaml")  # the module the probes trained
    optimizer, scheduler = edgetune.build_optimizer(model, result)

Importing this package never imports torch or the worker: a pipeline needs only httpx, pydantic
and PyYAML to ask for hyperparameters. `build_model` and `build_optimizer` import torch when they
are called (and need it installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgetune.client import (
    AsyncClient,
    Client,
    EdgetuneError,
    InvalidSpec,
    JobCancelled,
    JobFailed,
    ProblemError,
    Spec,
    Unreachable,
    WaitTimeout,
    load_spec,
)
from edgetune.schemas import Hyperparameters, Recommendation

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler


def _without_torch(exc: ModuleNotFoundError) -> Exception:
    """What to raise when edgetune.nets/optim cannot be imported: where torch is missing (the
    slim install), an ImportError that says what to install; anything else as it was."""
    if exc.name not in ("torch", "torchvision"):
        return exc
    return ImportError(
        f"edgetune.build_model and build_optimizer need {exc.name}: pip install torch "
        "torchvision (or '<repo>[worker]')"
    )


def build_model(
    spec: Spec,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """The module the job's probes trained for `spec` (a RecommendationSpec, a mapping or a
    YAML/JSON path): same architecture, init and initial weights (the first probe's seed), on
    the CPU. `input_shape`/`num_classes` are needed only for data whose files alone say (npz,
    image-folder)."""
    try:
        from edgetune import nets  # torch, only now
    except ModuleNotFoundError as exc:
        raise _without_torch(exc) from exc
    return nets.probed_model(load_spec(spec), input_shape=input_shape, num_classes=num_classes)


def build_optimizer(
    model: nn.Module,
    recommendation: Recommendation | Hyperparameters,
    *,
    steps_per_epoch: int | None = None,
) -> tuple[Optimizer, LRScheduler]:
    """(optimizer, scheduler) for the recommended hyperparameters; step the scheduler once per
    optimizer step (the recommended schedule; constant by default). `steps_per_epoch` defaults
    to the probes' count, train size // batch size. ValueError when the recommendation holds
    none (its validity.reason says why)."""
    try:
        from edgetune import optim  # torch, only now
    except ModuleNotFoundError as exc:
        raise _without_torch(exc) from exc
    return optim.build_optimizer(model, recommendation, steps_per_epoch=steps_per_epoch)


__all__ = [
    "AsyncClient",
    "Client",
    "EdgetuneError",
    "InvalidSpec",
    "JobCancelled",
    "JobFailed",
    "ProblemError",
    "Unreachable",
    "WaitTimeout",
    "build_model",
    "build_optimizer",
]
