"""The order parameter of your own training run, measured every k steps.

    from edgetune.monitor import Monitor

    with Monitor(model, every=50, steps_per_epoch=len(loader), job=job_id, client=client) as mon:
        for x, y in loader:
            ...
            optimizer.step()
            mon.step()

J_l = √fan_in·std(W_l) per hidden layer and the summary J² = max_l J_l², as the engine's order
parameter "J2" (shared/docs/science.md §2; worker/law.py order_series). The hidden layers are
`edgetune.nets.layer_infos` for a module edgetune built, else every Linear and Conv2d in module
order but the last (the read-out). It reads weights only, no data: one reduction per layer every
`every` steps, a fraction of a percent of a training step on the paper's model
(benchmarks/monitor_overhead.py). Given a job (and a client or URL), it reports the points to the
service, which plots them beside the job's predicted trajectory; it warns once (EdgeWarning)
when J² passes the edge by `margin`.

`EdgeCallback`, for PyTorch Lightning, is defined only where `lightning` or `pytorch_lightning`
is installed (neither is a dependency of edgetune).
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from edgetune.client import Client, EdgetuneError
from edgetune.measured import TrajectoryPoint, TrajectoryReport
from edgetune.nets import EdgeNet, PluginNet, TorchvisionNet, foreign_layer_infos, layer_infos
from edgetune.schemas import EDGE

logger = logging.getLogger(__name__)

# Steps between measurements by default: about the engine's 20 measurements an epoch at B = 32 on
# Fashion-MNIST (1,700 steps an epoch), and cheap enough on any model (weights only).
DEFAULT_EVERY = 50
# Warn once J² passes the edge by this much: measured J² wobbles by a percent or so around a
# run that saturates at the edge, and such a run has not drifted.
DEFAULT_MARGIN = 0.1
# Points sent to the service together: one request every 20 measurements (1,000 steps by
# default), so reporting costs nothing measurable either.
REPORT_EVERY = 20


class EdgeWarning(UserWarning):
    """The run's order parameter passed the edge of chaos (J² > 1 + margin)."""


@dataclass(frozen=True)
class Measurement:
    step: int
    epoch: float | None
    J: list[float]  # per hidden layer

    @property
    def J2(self) -> float:
        """The summary the engine steers: the largest J_l² over the hidden layers."""
        return max(j * j for j in self.J)


def hidden_weights(model: nn.Module) -> list[tuple[Tensor, int]]:
    """(weight, fan_in) of each hidden layer of `model`, read-out excluded."""
    edgetune_built = isinstance(model, EdgeNet | TorchvisionNet | PluginNet)
    infos = layer_infos(model) if edgetune_built else foreign_layer_infos(model)
    if not infos:
        raise ValueError(
            f"{type(model).__name__} has no hidden Linear or Conv2d layer before its read-out"
        )
    params = dict(model.named_parameters())
    return [(params[info.weight], info.fan_in) for info in infos]


def couplings(weights: list[tuple[Tensor, int]]) -> list[float]:
    """J_l = √fan_in·std(W_l), the population std over all entries (worker/order.py coupling),
    read back in one transfer (a single host sync on a GPU). torch.std in one pass, not the
    engine's mean-then-squares: a third less time, the same value to float32 rounding."""
    with torch.no_grad():
        values = [
            math.sqrt(fan_in) * torch.std(w.detach().reshape(-1), correction=0).float()
            for w, fan_in in weights
        ]
        return [float(j) for j in torch.stack(values).cpu().tolist()]


class Monitor:
    """Call `step()` once after each optimizer step; it measures at step 0 (on creation) and
    every `every` steps. `measurements` holds every point; `drifted_at` the first step past the
    edge (None: not yet). With `job` and a `client` (or `url`/`api_key`) the points are reported
    to the service every REPORT_EVERY measurements and on `close()`; a failed report is logged
    and retried with the next, never raised into the training loop."""

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = DEFAULT_EVERY,
        steps_per_epoch: int | None = None,
        margin: float = DEFAULT_MARGIN,
        job: str | None = None,
        client: Client | None = None,
        url: str | None = None,
        api_key: str | None = None,
        run: str = "default",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.weights = hidden_weights(model)
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.margin = margin
        if url is not None and client is not None:
            raise ValueError("give a client or a url, not both")
        self.job = job
        self.run = run
        # A client made here is closed here; one passed in belongs to the caller.
        self._own_client = client is None and job is not None
        self.client = Client(url, api_key=api_key) if self._own_client else client
        self.steps = 0
        self.measurements: list[Measurement] = []
        self.drifted_at: int | None = None
        self._unsent: list[Measurement] = []
        self.measure()

    def step(self) -> Measurement | None:
        """Count one optimizer step; the measurement when one is due, else None."""
        self.steps += 1
        return self.measure() if self.steps % self.every == 0 else None

    def measure(self) -> Measurement:
        """Measure now, at the current step (also between due steps)."""
        epoch = self.steps / self.steps_per_epoch if self.steps_per_epoch else None
        point = Measurement(self.steps, epoch, couplings(self.weights))
        self.measurements.append(point)
        if self.drifted_at is None and EDGE * (1 + self.margin) < point.J2:
            self.drifted_at = point.step
            warnings.warn(
                EdgeWarning(
                    f"the run passed the edge of chaos at step {point.step}: J² = "
                    f"{point.J2:.3g} > {EDGE * (1 + self.margin):.3g}; past it the model "
                    "overfits (a smaller η/((1−α)B), or weight decay, keeps it at the edge)"
                ),
                stacklevel=3,
            )
        if self.job is not None:
            self._unsent.append(point)
            if len(self._unsent) >= REPORT_EVERY:
                self.flush()
        return point

    def flush(self) -> None:
        """Report the points not yet sent (nothing without a job)."""
        if self.job is None or self.client is None or not self._unsent:
            return
        report = TrajectoryReport(
            run=self.run,
            points=[
                TrajectoryPoint(step=m.step, epoch=m.epoch, value=m.J2, J=m.J) for m in self._unsent
            ],
        )
        try:
            self.client.report_trajectory(self.job, report)
        except EdgetuneError as exc:  # the training run matters more than its report
            logger.warning("edgetune monitor: could not report to job %s: %s", self.job, exc)
            return
        self._unsent.clear()

    def close(self) -> None:
        self.flush()
        if self._own_client and self.client is not None:
            self.client.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _lightning_callback_base() -> type | None:
    """Lightning's Callback class where Lightning is installed (either package name)."""
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            base: type = importlib.import_module(package).Callback
        except ImportError:
            continue
        return base
    return None


_CallbackBase = _lightning_callback_base()

if _CallbackBase is not None:

    class EdgeCallback(_CallbackBase):  # type: ignore[misc, valid-type]
        """A Monitor on the LightningModule, stepped once per optimizer step (global_step),
        so gradient accumulation counts steps as a plain loop would."""

        def __init__(self, **monitor_kwargs: Any) -> None:
            super().__init__()
            self.monitor_kwargs = monitor_kwargs
            self.monitor: Monitor | None = None
            self._seen_step = 0

        def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
            kwargs = dict(self.monitor_kwargs)
            batches = getattr(trainer, "num_training_batches", None)
            accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
            if "steps_per_epoch" not in kwargs and isinstance(batches, int) and batches > 0:
                kwargs["steps_per_epoch"] = max(1, batches // accumulate)
            self.monitor = Monitor(pl_module, **kwargs)
            self._seen_step = trainer.global_step

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if self.monitor is None:
                return
            while self._seen_step < trainer.global_step:
                self._seen_step += 1
                self.monitor.step()

        def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
            if self.monitor is not None:
                self.monitor.close()
