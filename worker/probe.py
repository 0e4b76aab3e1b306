"""Probe training: short SGD runs that measure the chaos order parameters, population-batched.

A probe is one configuration (learning rate, momentum, weight decay, batch size, seed) trained for
a few hundred to a few thousand steps while its order parameters are recorded. Probes that share a
model spec and a batch size train together as one *population*: their parameters are stacked along
a leading member axis (`torch.func.stack_module_state`); one vmapped `functional_call` computes
every member's logits on its own minibatch; one backward pass of the summed member losses gives
each member the gradient of its own loss (members share no parameters); SGD is applied to the
stacked tensors with per-member hyperparameters broadcast along that axis. A vmapped
`torch.func.grad_and_value` gives the same gradients but costs about twice the Python time per step
(measured on a tiny model), the part of a small model's step that a GPU does not speed up.

Members never mix: each has its own initialisation (`torch.manual_seed(seed)` on the CPU generator,
then `build_model` on the CPU, so it is the same on every device), its own data order (a CPU
generator seeded with seed + 1, a fresh permutation per epoch, the last incomplete batch dropped)
and its own optimizer state. The result equals running the same configurations one by one with
`torch.optim.SGD` (`train_sequential`, the reference loop) to float32 rounding.

SGD follows PyTorch's semantics exactly: d_p = g + weight_decay·p; buf = momentum·buf + d_p (the
first step buf = d_p); p -= lr·buf. `weight_decay` is PyTorch's; the paper writes its L2 term as
λ‖W‖² (gradient 2λW), so the paper's λ is weight_decay / 2.

The engine takes values and returns values: no database, no printing. It reports through
`on_progress` after every measurement (which can cancel the run) and lets the caller stop single
members early through `stop_when`. Divergence (a non-finite loss, or J exploding) is an outcome of
the member, not an exception; the rest of the population carries on.

Inside, `run_population` is a short loop over a `_Population` (the stacked members, their data and
the vmapped functions that step, measure and evaluate them) and a `_Ledger` (each member's records
and result); after every measurement the pure `judge` decides each member's fate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from app.schemas import ModelSpec
from edgetune.nets import EdgeNet, layer_infos, seeded_model
from edgetune.schedules import Schedule, multiplier
from worker.data import Dataset
from worker.order import couplings, measure, random_unit_vectors

logger = logging.getLogger(__name__)

Outcome = Literal["completed", "stopped", "diverged", "cancelled"]

# A member whose largest J_l passes this is chaotic beyond any use (the edge is at J = 1).
J_BOUND = 1e3
# Order parameters are measured on a fixed subset of the training data, the same for every member
# and every measurement, so a time series reflects the weights and not the batch. χ is a mean over
# 128 × width pre-activations: plenty; 256 made a measurement cost half as much again.
MEASURE_BATCH = 128
# APJN is a few vector–Jacobian products per layer; a smaller batch is plenty for a mean over
# examples × vectors, and keeps conv layers' random vectors small.
APJN_BATCH = 64
APJN_VECTORS = 4
VAL_MAX_EXAMPLES = 2000
VAL_CHUNK = 500
# Fixed seeds of the measurement subset and the APJN vectors: every probe of every job is measured
# the same way, whatever the probe seeds are.
MEASURE_SEED = 20210721
# Measurements per epoch (J, chi) and evaluations per epoch (APJN, validation) by default.
MEASURES_PER_EPOCH = 20
EVALS_PER_EPOCH = 2
# Floors on the intervals, in training examples, so that measuring stays cheap on small datasets.
# Measured on the paper model at B = 32 (CPU, 4 members): one measurement costs about 1.3 training
# steps and one evaluation (2000 validation examples + APJN) about 12, so these floors keep each
# under ~2.5% of the training time; at 20 and 2 per epoch on Fashion-MNIST each is about 1.5%.
MEASURE_FLOOR_SAMPLES = 2048
EVAL_FLOOR_SAMPLES = 16384
# AdamW's β1, β2 and ε: PyTorch's defaults, fixed (not recommended).
ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@dataclass(frozen=True)
class ProbeConfig:
    """One probe. `weight_decay` is PyTorch's; the paper's λ (L2 term λ‖W‖²) is weight_decay/2."""

    learning_rate: float
    momentum: float
    weight_decay: float
    batch_size: int
    seed: int
    steps: int  # optimizer steps to run
    nesterov: bool = False
    # "adamw": torch.optim.AdamW with ADAMW_BETAS and ADAMW_EPS; `momentum` must then be 0 (β1
    # plays its part) and `weight_decay` is AdamW's decoupled decay.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # The learning-rate schedule (edgetune/schedules.py), over a run of schedule_epochs epochs:
    # learning_rate is its peak. Probes run constant; scheduled configs are full runs.
    schedule: Schedule = "constant"
    schedule_epochs: float = 0.0
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be finite and >= 0, not {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), not {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, not {self.weight_decay}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, not {self.steps}")
        if self.optimizer == "adamw" and (self.momentum != 0 or self.nesterov):
            raise ValueError("an AdamW config takes no SGD momentum (its β1 is ADAMW_BETAS[0])")
        if self.schedule != "constant" and not self.schedule_epochs > 0:
            raise ValueError(f"a {self.schedule} schedule needs schedule_epochs > 0")


@dataclass
class ProbeRecord:
    """One measurement point of one probe. Every float in it is finite (JSON-safe)."""

    step: int
    epoch: float  # step · batch_size / train_size
    J: list[float]  # per hidden layer
    J0: list[float]
    chi: list[float] | None  # None for torchvision models (activation unknown)
    lyapunov: float | None  # mean ½·ln χ_l over the iterated layers; None where χ is unknown or 0
    apjn: list[float] | None  # only at evaluation points, EdgeNet models
    # Mean minibatch loss since the previous record; at step 0, the loss on the measurement batch.
    train_loss: float
    val_loss: float | None  # only at evaluation points, when there is validation data
    val_accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeRecord:
        return cls(**d)


@dataclass
class ProbeResult:
    config: ProbeConfig
    outcome: Outcome
    reason: str | None
    records: list[ProbeRecord]
    steps_done: int
    # Wall time attributed to this probe: the population's time until the member was frozen,
    # divided by the number of members.
    seconds: float
    # Final parameters on the CPU, only with run_population(keep_params=True); never serialised.
    params: dict[str, Tensor] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "outcome": self.outcome,
            "reason": self.reason,
            "records": [r.to_dict() for r in self.records],
            "steps_done": self.steps_done,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        return cls(
            config=ProbeConfig(**d["config"]),
            outcome=d["outcome"],
            reason=d["reason"],
            records=[ProbeRecord.from_dict(r) for r in d["records"]],
            steps_done=d["steps_done"],
            seconds=d["seconds"],
        )


@dataclass(frozen=True)
class ProbeProgress:
    """Passed to `on_progress` after every measurement."""

    step: int
    steps_total: int  # the longest member's step count
    seconds: float  # since the population started
    records: list[list[ProbeRecord]]  # per member, every record so far
    results_so_far: list[ProbeResult | None]  # per member: its result once frozen, else None


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else the first GPU when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_model() -> str:
    """The processor's name as the kernel reports it (Linux), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    """What a device is, for logs and benchmark records: the GPU's name, or the CPU's and its
    cores."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores"


_heap_kept = False


def keep_freed_memory_on_heap() -> bool:
    """Stop glibc from handing large freed blocks back to the kernel; True where it took effect.

    glibc serves allocations over its mmap threshold (at most 32 MiB) with mmap and unmaps them on
    free. A CPU population allocates several such tensors every step (gradients and updates of
    members × fan_in × fan_out floats: 78 MB for 32 copies of the paper's layer), so each step
    page-faults them back in, zeroed by the kernel: on 32 members that was 40% of the process's
    CPU time, in system time (a million page faults in 40 steps; 150k after this). Process-wide
    and idempotent; without glibc (musl, macOS) nothing changes.
    """
    global _heap_kept
    if not _heap_kept:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        # M_MMAP_MAX = 0: no mmap for large blocks; M_TRIM_THRESHOLD: keep up to 1 GiB of freed
        # heap instead of trimming it after every step.
        _heap_kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
    return _heap_kept


def default_intervals(train_size: int, batch_size: int) -> tuple[int, int]:
    """Default (measure_every, eval_every) in steps: ~20 measurements and ~2 evaluations per
    epoch, but never so often that they cost more than a few percent of the training."""
    steps_per_epoch = max(1, train_size // batch_size)
    measure_every = max(
        round(steps_per_epoch / MEASURES_PER_EPOCH), math.ceil(MEASURE_FLOOR_SAMPLES / batch_size)
    )
    eval_every = max(
        round(steps_per_epoch / EVALS_PER_EPOCH), math.ceil(EVAL_FLOOR_SAMPLES / batch_size)
    )
    # Evaluations land on measurement steps.
    eval_every = measure_every * max(1, round(eval_every / measure_every))
    return measure_every, eval_every


def init_model(model_spec: ModelSpec, dataset: Dataset, seed: int) -> nn.Module:
    """A member's initial model, on the CPU: the same on every device for a given seed, and the
    same module `edgetune.build_model` gives a pipeline (`edgetune.nets.seeded_model`: BatchNorm
    on batch statistics, which is what vmapped training needs; the caller's RNG untouched)."""
    return seeded_model(model_spec, dataset.input_shape, dataset.num_classes, seed)


def _order_generator(seed: int) -> torch.Generator:
    """The member's data-order stream (CPU), kept apart from its initialisation stream."""
    return torch.Generator().manual_seed(seed + 1)


def train_sequential(
    model_spec: ModelSpec,
    dataset: Dataset,
    config: ProbeConfig,
    *,
    device: torch.device,
    steps: int | None = None,
) -> nn.Module:
    """The plain PyTorch reference: one model, torch.optim.SGD, the probe's init and data order.

    A fresh permutation of the training set per epoch from the member's own generator; the last
    incomplete batch is dropped. No measurements.
    """
    steps = config.steps if steps is None else steps
    data = dataset.to(device)
    batch = config.batch_size
    steps_per_epoch = data.train_size // batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {batch} exceeds the {data.train_size} training examples")
    model = init_model(model_spec, dataset, config.seed).to(device)
    model.train()
    optimizer: torch.optim.Optimizer
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.learning_rate,
            betas=ADAMW_BETAS,
            eps=ADAMW_EPS,
            weight_decay=config.weight_decay,
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    generator = _order_generator(config.seed)
    order = torch.empty(0, dtype=torch.long, device=device)
    for step in range(steps):
        position = step % steps_per_epoch
        if position == 0:
            order = torch.randperm(data.train_size, generator=generator).to(device)
        idx = order[position * batch : (position + 1) * batch]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def _member_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy per member: logits (P, B, classes), targets (P, B) → (P,).

    The same numbers as F.cross_entropy per member, written with log_softmax + gather because
    cross_entropy under vmap goes through a Python decomposition that costs more than the math.
    """
    picked = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -picked.mean(-1)


class _Stack:
    """The live members' parameters and SGD state, stacked along dim 0 in the order of `members`;
    PyTorch's SGD applied to all of them at once."""

    def __init__(
        self,
        configs: list[ProbeConfig],
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        device: torch.device,
    ) -> None:
        self.configs = configs
        self.device = device
        self.members = list(range(len(configs)))  # indices into configs of the live members
        # Leaves that require grad: one backward of the summed member losses gives every member
        # the gradient of its own loss (members share no parameters).
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        # One spec's probes share the optimizer; a population mixing them is a caller's mistake.
        if len({c.optimizer for c in configs}) > 1:
            raise ValueError("a population's members must all use the same optimizer")
        self.adamw = bool(configs) and configs[0].optimizer == "adamw"
        self.adam_steps = 0
        # AdamW's first and second moments (exp_avg, exp_avg_sq), stacked like the parameters.
        self.adam_state: dict[str, tuple[Tensor, Tensor]] = (
            {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in params.items()}
            if self.adamw
            else {}
        )
        # Members only ever leave, so a population without momentum never needs the buffers.
        self.heavy_ball = any(c.momentum > 0 for c in configs)
        self.momentum_buffers = (
            {k: torch.zeros_like(v) for k, v in params.items()} if self.heavy_ball else {}
        )
        self.order = torch.empty((len(configs), 0), dtype=torch.long, device=device)
        # Since the last record, per member: the sum of its minibatch losses, how many steps that
        # is, and the first of those steps whose loss was not finite (−1: none). Running tensors,
        # not a list of per-step losses: a list kept each step's loss storage alive (about
        # 1.6 MB per step for 6 members of the paper model), which over a long run without
        # records grew past 20 GB.
        self.reset_losses()
        self._set_hyperparameters()

    def _set_hyperparameters(self) -> None:
        live = [self.configs[m] for m in self.members]

        def column(values: list[float]) -> Tensor:
            return torch.tensor(values, dtype=torch.float32, device=self.device)

        neg_lr = column([-c.learning_rate for c in live])
        momentum = column([c.momentum for c in live])
        decay = column([c.weight_decay for c in live])
        self.decays = any(c.weight_decay > 0 for c in live)
        self.scheduled = any(c.schedule != "constant" for c in live)
        # One spec's probes share the flag; a population mixing it is a caller's mistake.
        if len({c.nesterov for c in live}) > 1:
            raise ValueError("a population's members must all use Nesterov momentum or none")
        self.nesterov = bool(live) and live[0].nesterov
        # Per parameter, the (P,) hyperparameters viewed as (P, 1, ...) to broadcast.
        self.hyper = {}
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            self.hyper[name] = (neg_lr.view(shape), momentum.view(shape), decay.view(shape))

    def schedule_step(self, step: int, steps_per_epoch: int) -> None:
        """Set each scheduled member's rate for `step`: its peak times the schedule's multiplier
        at epoch step/steps_per_epoch (as edgetune.optim's per-step scheduler does)."""
        epoch = step / steps_per_epoch
        rates = [
            -c.learning_rate * multiplier(c.schedule, epoch, c.schedule_epochs, c.warmup_epochs)
            for c in (self.configs[m] for m in self.members)
        ]
        neg_lr = torch.tensor(rates, dtype=torch.float32, device=self.device)
        for name, (_, momentum, decay) in self.hyper.items():
            self.hyper[name] = (neg_lr.view(momentum.shape), momentum, decay)

    def reset_losses(self) -> None:
        members = len(self.members)
        self.loss_sum = torch.zeros(members, device=self.device)
        self.first_bad = torch.full((members,), -1, dtype=torch.long, device=self.device)
        self.loss_steps = 0

    @torch.no_grad()
    def add_losses(self, losses: Tensor) -> None:
        """Count one step's (P,) minibatch losses, with no host sync."""
        self.loss_sum += losses
        bad = ~torch.isfinite(losses) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, self.loss_steps, self.first_bad)
        self.loss_steps += 1

    @torch.no_grad()
    def keep(self, positions: list[int]) -> None:
        """Drop every member not at `positions`: frozen members cost nothing afterwards.

        Called right after a measurement, when the loss tally is empty.
        """
        index = torch.tensor(positions, dtype=torch.long, device=self.device)
        self.members = [self.members[p] for p in positions]
        self.params = {
            k: v.index_select(0, index).requires_grad_(True) for k, v in self.params.items()
        }
        self.momentum_buffers = {
            k: v.index_select(0, index) for k, v in self.momentum_buffers.items()
        }
        self.adam_state = {
            k: (m.index_select(0, index), v.index_select(0, index))
            for k, (m, v) in self.adam_state.items()
        }
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        self.order = self.order.index_select(0, index)
        self._set_hyperparameters()
        self.reset_losses()

    @torch.no_grad()
    def sgd_step(self, grads: tuple[Tensor, ...]) -> None:
        """PyTorch's SGD on every member at once, in place (the grads are consumed).

        Each line is one pass over the stacked tensors, and for a small model these passes are a
        large share of a step, so none is spent that is not needed. The (P, 1, ...)
        hyperparameter goes first among addcmul's factors: the CPU kernels vectorise a broadcast
        operand only in that position.
        """
        for (name, p), d_p in zip(list(self.params.items()), grads, strict=True):
            if d_p.stride() != p.stride():
                p = self._adopt_layout(name, d_p)
            neg_lr, momentum, decay = self.hyper[name]
            if self.decays:
                d_p.addcmul_(decay, p)  # d_p = g + wd·p
            if self.heavy_ball:
                # buf = α·buf + d_p in one pass. buf starts at zero, so the first step gives
                # buf = d_p exactly, and α = 0 gives buf = d_p, both as in PyTorch.
                buf = self.momentum_buffers[name]
                torch.addcmul(d_p, momentum, buf, out=buf)
                # PyTorch's Nesterov step uses g + α·buf: one more pass, only when asked for.
                d_p = torch.addcmul(d_p, momentum, buf) if self.nesterov else buf
            p.addcmul_(neg_lr, d_p)  # p -= lr·buf

    def adamw_step(self, grads: tuple[Tensor, ...]) -> None:
        """PyTorch's AdamW (single-tensor algorithm, no amsgrad) on every member at once:
        p ← p·(1 − lr·wd), then p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε)."""
        beta1, beta2 = ADAMW_BETAS
        self.adam_steps += 1
        correction1 = 1 - beta1**self.adam_steps
        root_correction2 = math.sqrt(1 - beta2**self.adam_steps)
        for (name, p), g in zip(list(self.params.items()), grads, strict=True):
            neg_lr, _, decay = self.hyper[name]
            with torch.no_grad():
                if self.decays:
                    p.mul_(1 + neg_lr * decay)
                m, v = self.adam_state[name]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / root_correction2).add_(ADAMW_EPS)
                p.addcdiv_(neg_lr * (m / correction1), denom)

    def _adopt_layout(self, name: str, grad: Tensor) -> Tensor:
        """Store a parameter (and its momentum) in the memory layout its gradient comes in.

        Under vmap a linear layer's weight gradient arrives transposed in memory (bmm's backward
        does not restore the weight's layout, as mm's does). Elementwise passes over operands of
        different layouts are strided, several times slower; with one layout they are dense. The
        forward then reads the weight as a contiguous Wᵀ, which bmm handles as well. Happens on
        the first step (and after a compaction), not every step.
        """
        for state in (self.params, self.momentum_buffers):
            if name in state:
                old = state[name]
                new = torch.empty_strided(
                    old.shape, grad.stride(), dtype=old.dtype, device=old.device
                )
                new.copy_(old)
                state[name] = new
        self.params[name].requires_grad_(True)
        return self.params[name]


def _finite(values: list[float] | None) -> bool:
    return values is None or all(math.isfinite(v) for v in values)


def finite_record(record: ProbeRecord) -> bool:
    """Every number in the record is finite (records are kept only then: strict JSON)."""
    finite = all(_finite(v) for v in (record.J, record.J0, record.chi, record.apjn))
    return finite and all(
        v is None or math.isfinite(v) for v in (record.train_loss, record.val_loss)
    )


Verdict = tuple[Outcome, str | None]


def judge(
    record: ProbeRecord,
    *,
    steps: int,
    loss_failed_at: int | None,
    stop: Callable[[], bool] | None = None,
) -> Verdict | None:
    """What becomes of a member after its measurement `record`: None trains on, else it freezes
    with (outcome, reason).

    In this order: a loss that went non-finite since the last record (at step `loss_failed_at`), a
    non-finite order parameter, or J past J_BOUND: diverged; its last step (`steps`): completed;
    `stop()`, asked only when nothing else decided: stopped.
    """
    step = record.step
    if loss_failed_at is not None:
        return "diverged", f"non-finite loss at step {loss_failed_at}"
    if not finite_record(record):
        return "diverged", f"non-finite order parameter at step {step}"
    if max(record.J) > J_BOUND:
        layer = max(range(len(record.J)), key=lambda i: record.J[i])
        return "diverged", f"J exploded (J_{layer} = {record.J[layer]:.3g}) at step {step}"
    if step == steps:
        return "completed", None
    if stop is not None and stop():
        return "stopped", f"stop_when at step {step}"
    return None


class _Population:
    """A population in training: its stacked members, the data they train on, and the vmapped
    functions that step, measure and evaluate every live member at once."""

    def __init__(
        self,
        model_spec: ModelSpec,
        dataset: Dataset,
        configs: list[ProbeConfig],
        *,
        device: torch.device,
        val_examples: int,
        measure_examples: int = MEASURE_BATCH,
    ) -> None:
        self.configs = configs
        self.device = device
        self.data = data = dataset.to(device)
        self.batch = configs[0].batch_size
        self.train_size = data.train_size
        self.steps_per_epoch = self.train_size // self.batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {self.batch} exceeds the {self.train_size} training examples"
            )
        models = [init_model(model_spec, dataset, c.seed).to(device) for c in configs]
        template = models[0]
        infos = layer_infos(template)
        self.is_edge = isinstance(template, EdgeNet)

        fixed = torch.Generator().manual_seed(MEASURE_SEED)
        measure_idx = torch.randperm(self.train_size, generator=fixed)[:measure_examples].to(device)
        self.x_measure = x_measure = data.x_train[measure_idx]
        self.y_measure = data.y_train[measure_idx]
        x_apjn = x_measure[:APJN_BATCH]
        vectors: list[Tensor] | None = None
        if self.is_edge:
            with torch.no_grad():
                _, _, preacts = template(x_apjn, trace=True)
            vectors = [
                random_unit_vectors(APJN_VECTORS, h.shape[0], tuple(h.shape[1:]), fixed, device)
                for h in preacts
            ]
        self.n_val = min(val_examples, int(data.x_val.shape[0]))
        self.x_val, self.y_val = data.x_val[: self.n_val], data.y_val[: self.n_val]

        params, buffers = stack_module_state(models)
        self.stack = _Stack(configs, params, buffers, device)
        # The template only supplies the structure; its own storage is not needed.
        self.template = template = template.to("meta")
        del models, params, buffers

        def logits(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            out: Tensor = functional_call(template, (p, b), (x,))
            return out

        # A closure over the template, not a bound method: vmap keeps the function it wraps, and
        # self → vmap → self is a cycle that only the cyclic collector frees, keeping the dataset
        # and every member's weights alive after the probes (≈220 MB a Fashion-MNIST job).
        # randomness="different": dropout (some torchvision models) draws its own mask per member.
        self.train_logits = vmap(logits, in_dims=(0, 0, 0), randomness="different")
        self.shared_logits = vmap(logits, in_dims=(0, 0, None))  # all on the same batch
        self.measure_all = vmap(lambda p: measure(template, p, x_measure, infos))
        self.couplings_all = vmap(
            lambda p: dict(zip(("J", "J0"), couplings(p, infos), strict=True))
        )
        self.apjn_all = vmap(lambda p: measure(template, p, x_apjn, infos, vectors)["apjn"])
        self.generators = [_order_generator(c.seed) for c in configs]

    @property
    def members(self) -> list[int]:
        """Indices into configs of the live members, in the order they are stacked."""
        return self.stack.members

    def train_step(self, step: int) -> None:
        """One SGD step of every live member, each on its own minibatch."""
        stack = self.stack
        position = step % self.steps_per_epoch
        if position == 0:
            stack.order = torch.stack(
                [
                    torch.randperm(self.train_size, generator=self.generators[m])
                    for m in self.members
                ]
            ).to(self.device)
        idx = stack.order[:, position * self.batch : (position + 1) * self.batch]
        if stack.scheduled:
            stack.schedule_step(step, self.steps_per_epoch)
        logits = self.train_logits(stack.params, stack.buffers, self.data.x_train[idx])
        losses = _member_losses(logits, self.data.y_train[idx])
        grads = torch.autograd.grad(losses.sum(), tuple(stack.params.values()))
        if stack.adamw:
            stack.adamw_step(grads)
        else:
            stack.sgd_step(grads)
        # Read at the next record: no host sync per step. Until then a member whose loss went
        # non-finite keeps stepping; its values are meaningless anyway and touch no other.
        stack.add_losses(losses.detach())

    def evaluate(self) -> tuple[list[float], list[float]]:
        """Mean validation loss and accuracy per member, in chunks (memory ∝ P × chunk)."""
        self.template.eval()  # dropout off; BatchNorm keeps using batch statistics
        stack = self.stack
        members = len(stack.members)
        loss_sum = torch.zeros(members, device=self.device)
        correct = torch.zeros(members, device=self.device)
        for s in range(0, self.n_val, VAL_CHUNK):
            x, y = self.x_val[s : s + VAL_CHUNK], self.y_val[s : s + VAL_CHUNK]
            logits = self.shared_logits(stack.params, stack.buffers, x)  # (P, chunk, classes)
            loss_sum += _member_losses(logits, y.expand(members, -1)) * x.shape[0]
            correct += (logits.argmax(-1) == y).sum(1)
        self.template.train()
        return (loss_sum / self.n_val).tolist(), (correct / self.n_val).tolist()

    def _train_losses(self, step: int, last_record: int) -> tuple[list[float], list[int | None]]:
        """Per live member: its mean loss since the last record, and the first step since then
        at which it was not finite (None: it stayed finite). At step 0: the measurement batch's."""
        stack = self.stack
        if step == 0:
            logits = self.shared_logits(stack.params, stack.buffers, self.x_measure)
            losses = _member_losses(logits, self.y_measure.expand(len(stack.members), -1))
            return losses.tolist(), [None] * len(stack.members)
        steps = max(1, stack.loss_steps)
        failed_at: list[int | None] = [
            last_record + bad if bad >= 0 else None for bad in stack.first_bad.tolist()
        ]
        return (stack.loss_sum / steps).tolist(), failed_at

    def measure(
        self, step: int, last_record: int, with_eval: bool, with_chi: bool = True
    ) -> list[tuple[ProbeRecord, int | None]]:
        """Measure every live member: its record, and where its loss went non-finite (or None).
        Without `with_chi`, J and J0 only (weights alone: no forward pass)."""
        stack = self.stack
        order = self.measure_all if with_chi else self.couplings_all
        with torch.no_grad():
            host = {k: v.cpu().tolist() for k, v in order(stack.params).items()}
            train_loss, failed_at = self._train_losses(step, last_record)
            stack.reset_losses()
            val_loss, val_accuracy, apjn = self.evaluation() if with_eval else (None, None, None)
        measured = []
        for position in range(len(stack.members)):
            lyapunov = host["lyapunov"][position] if "lyapunov" in host else None
            record = ProbeRecord(
                step=step,
                epoch=step * self.batch / self.train_size,
                J=host["J"][position],
                J0=host["J0"][position],
                chi=host["chi"][position] if "chi" in host else None,
                # ln χ = −inf (a dead ReLU layer) is no exponent worth storing.
                lyapunov=lyapunov if lyapunov is not None and math.isfinite(lyapunov) else None,
                apjn=apjn[position] if apjn is not None else None,
                train_loss=train_loss[position],
                val_loss=val_loss[position] if val_loss is not None else None,
                val_accuracy=val_accuracy[position] if val_accuracy is not None else None,
            )
            measured.append((record, failed_at[position]))
        return measured

    def evaluation(
        self,
    ) -> tuple[list[float] | None, list[float] | None, list[list[float]] | None]:
        """Per live member: validation loss and accuracy (None without validation data) and
        APJN per layer (None unless an EdgeNet)."""
        with torch.no_grad():
            val_loss, val_accuracy = self.evaluate() if self.n_val > 0 else (None, None)
            apjn = self.apjn_all(self.stack.params).cpu().tolist() if self.is_edge else None
        return val_loss, val_accuracy, apjn

    def member_params(self, position: int) -> dict[str, Tensor]:
        """A copy of one live member's parameters on the CPU."""
        return {
            k: v[position].detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, v in self.stack.params.items()
        }


@dataclass
class _Ledger:
    """Per member: every record so far, and its result once frozen."""

    configs: list[ProbeConfig]
    start: float  # perf_counter at the population's start
    keep_params: bool
    records: list[list[ProbeRecord]] = field(init=False)
    results: list[ProbeResult | None] = field(init=False)

    def __post_init__(self) -> None:
        self.records = [[] for _ in self.configs]
        self.results = [None] * len(self.configs)

    def freeze(
        self, pop: _Population, position: int, step: int, outcome: Outcome, reason: str | None
    ) -> None:
        member = pop.members[position]
        self.results[member] = ProbeResult(
            config=self.configs[member],
            outcome=outcome,
            reason=reason,
            records=self.records[member],
            steps_done=step,
            seconds=(time.perf_counter() - self.start) / len(self.configs),
            params=pop.member_params(position) if self.keep_params else None,
        )
        logger.debug("probe %d %s at step %d: %s", member, outcome, step, reason)

    def judge_all(
        self,
        pop: _Population,
        measured: list[tuple[ProbeRecord, int | None]],
        stop_when: Callable[[int, list[ProbeRecord]], bool] | None,
        evaluate_stopped: bool = False,
    ) -> None:
        """Keep each finite record, freeze the members that are done, drop them from `pop`.
        With `evaluate_stopped`, a member stopped at a record without an evaluation gets one
        there first: its last record then carries validation loss, as a completed one's does."""
        keep: list[int] = []
        done: list[tuple[int, int, Verdict]] = []
        for position, (record, failed_at) in enumerate(measured):
            member = pop.members[position]
            if finite_record(record):  # records hold finite numbers only: strict JSON
                self.records[member].append(record)
            stop = partial(stop_when, member, self.records[member]) if stop_when else None
            steps = self.configs[member].steps
            verdict = judge(record, steps=steps, loss_failed_at=failed_at, stop=stop)
            if verdict is None:
                keep.append(position)
            else:
                done.append((position, record.step, verdict))
        unevaluated = [
            position
            for position, _, verdict in done
            if verdict[0] == "stopped" and measured[position][0].val_loss is None
        ]
        if evaluate_stopped and unevaluated:
            self._evaluate_last(pop, unevaluated)
        for position, step, verdict in done:
            self.freeze(pop, position, step, *verdict)
        if len(keep) < len(pop.members):
            pop.stack.keep(keep)

    def _evaluate_last(self, pop: _Population, positions: list[int]) -> None:
        """Add an evaluation to the last record of the members at `positions`."""
        val_loss, val_accuracy, apjn = pop.evaluation()
        for position in positions:
            records = self.records[pop.members[position]]
            evaluated = replace(
                records[-1],
                val_loss=val_loss[position] if val_loss is not None else None,
                val_accuracy=val_accuracy[position] if val_accuracy is not None else None,
                apjn=apjn[position] if apjn is not None else None,
            )
            if finite_record(evaluated):
                records[-1] = evaluated

    def progress(self, step: int) -> ProbeProgress:
        return ProbeProgress(
            step=step,
            steps_total=max(c.steps for c in self.configs),
            seconds=time.perf_counter() - self.start,
            records=[list(r) for r in self.records],
            results_so_far=list(self.results),
        )

    def finished(self) -> list[ProbeResult]:
        finished = [r for r in self.results if r is not None]
        assert len(finished) == len(self.configs)
        return finished


def _check(configs: list[ProbeConfig], measure_every: int | None, eval_every: int | None) -> None:
    if not configs:
        raise ValueError("a population needs at least one config")
    batch = configs[0].batch_size
    if any(c.batch_size != batch for c in configs):
        sizes = sorted({c.batch_size for c in configs})
        raise ValueError(f"all configs of a population share one batch size (got {sizes})")
    if measure_every is not None and measure_every < 0:
        raise ValueError(f"measure_every must be >= 0, not {measure_every}")
    if eval_every is not None and eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, not {eval_every}")


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def run_population(
    model_spec: ModelSpec,
    dataset: Dataset,
    configs: list[ProbeConfig],
    *,
    device: torch.device,
    measure_every: int | None = None,
    eval_every: int | None = None,
    on_progress: Callable[[ProbeProgress], bool] | None = None,
    stop_when: Callable[[int, list[ProbeRecord]], bool] | None = None,
    keep_params: bool = False,
    val_examples: int = VAL_MAX_EXAMPLES,
    chi_every_record: bool = True,
    evaluate_last_only: bool = False,
    measure_examples: int = MEASURE_BATCH,
) -> list[ProbeResult]:
    """Train `configs` together as one population and return one result per config, in order.

    Records are taken at step 0, every `measure_every` steps (J, J0, chi, lyapunov, train loss),
    and at each member's last step; every `eval_every` steps and at the last step they also carry
    APJN and validation loss/accuracy. None means the defaults of `default_intervals`; 0 means
    never (measure: only step 0 and the last step; eval: no APJN or validation at all).

    `on_progress` is called after every measurement; returning False cancels the run at once
    (unfinished members end "cancelled"). `stop_when(member, records)` is asked at every
    measurement and freezes the member as "stopped" when it returns True. With `keep_params`,
    each result carries its member's final parameters (on the CPU). Validation uses the first
    `val_examples` validation examples (all of them where there are fewer). Without
    `chi_every_record`, χ and the Lyapunov summary are measured at step 0 and with the
    evaluations only: for models steered by J², where χ informs nothing between them and its
    forward pass cost as much as 3 training steps. With `evaluate_last_only`, validation and APJN
    are measured only where members end, what `eval_every` says notwithstanding: at a step where
    some member completes (every live member is evaluated there, in one vmapped pass), and for a
    member stopped by `stop_when`, at the record its stop was decided at (without χ). For callers
    that read nothing but the last evaluation. Order parameters are measured on the first
    `measure_examples` of a fixed shuffle of the training set (a prefix: fewer examples measure a
    subset of the same ones).
    """
    _check(configs, measure_every, eval_every)
    ledger = _Ledger(configs, time.perf_counter(), keep_params)
    if device.type == "cpu":
        keep_freed_memory_on_heap()
    pop = _Population(
        model_spec,
        dataset,
        configs,
        device=device,
        val_examples=val_examples,
        measure_examples=measure_examples,
    )
    default_measure, default_eval = default_intervals(pop.train_size, pop.batch)
    measure_every = default_measure if measure_every is None else measure_every
    eval_every = default_eval if eval_every is None else eval_every
    # The dropout masks of torchvision models come from the global generator: seed it (on a fork,
    # so the caller's RNG is untouched) so that the same configs give the same run.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(configs[0].seed)
        step = last_record = 0
        while pop.members:
            finishing = any(configs[m].steps == step for m in pop.members)
            evaluation_due = not evaluate_last_only and _due(step, eval_every)
            if step == 0 or finishing or _due(step, measure_every) or evaluation_due:
                if evaluate_last_only:
                    with_eval = finishing
                else:
                    with_eval = evaluation_due or (eval_every > 0 and finishing)
                with_chi = chi_every_record or step == 0 or with_eval
                measured = pop.measure(step, last_record, with_eval, with_chi)
                ledger.judge_all(pop, measured, stop_when, evaluate_last_only)
                if on_progress is not None and not on_progress(ledger.progress(step)):
                    for position in range(len(pop.members)):
                        ledger.freeze(pop, position, step, "cancelled", f"cancelled at step {step}")
                    break
                if not pop.members:
                    break
                last_record = step
            pop.train_step(step)
            step += 1
    return ledger.finished()
