"""The request spec and the API's response models, shared by the client, the API and the worker.

They live in the `edgetune` package, the import path users see (`from edgetune.schemas import
RecommendationSpec`); `app.schemas` re-exports them for the service's own modules.

Declarative only: a spec names architectures, datasets and numbers; nothing in it is ever executed
or unpickled. Every model forbids unknown fields so a typo is an error that names the field.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edgetune.schedules import Schedule

Activation = Literal["tanh", "relu", "gelu", "silu", "linear"]

# Hard ceilings that hold whatever the deployment configures; the service adds its own, tighter,
# configurable limits (parameter count, probe budget) on top.
MAX_WIDTH = 16_384
MAX_DEPTH = 64


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a valid number, not a boolean")
    return value


# A float that refuses true/false (pydantic's lax mode reads true as 1.0). Not strict=True: that
# would refuse the string "1e-3" too, which is how PyYAML (YAML 1.1) reads `learning_rate: 1e-3`.
Number = Annotated[float, BeforeValidator(_not_a_bool)]


class InitSpec(Strict):
    """Weight initialisation of the hidden layers.

    `edge` is the paper's: hidden weights N(0, J²/fan_in), Glorot-uniform read-out, zero biases.
    """

    scheme: Literal["edge", "torch-default", "kaiming", "xavier"] = "edge"
    J: Number = Field(0.5, gt=0, le=10, description="Coupling J for scheme=edge")


class MLPSpec(Strict):
    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=lambda: [784], min_length=1, max_length=MAX_DEPTH
    )
    activation: Activation = "tanh"
    hidden_bias: StrictBool = False
    output_bias: StrictBool = True
    init: InitSpec = Field(default_factory=InitSpec)


class ConvBlockSpec(Strict):
    channels: int = Field(strict=True, ge=1, le=4096)
    kernel: int = Field(3, strict=True, ge=1, le=15)
    stride: int = Field(1, strict=True, ge=1, le=8)
    # Max-pool window after the activation; 1 = no pooling.
    pool: int = Field(1, strict=True, ge=1, le=8)


class CNNSpec(Strict):
    type: Literal["cnn"] = "cnn"
    blocks: list[ConvBlockSpec] = Field(min_length=1, max_length=MAX_DEPTH)
    activation: Activation = "relu"
    # Dense hidden layers between the (flattened) conv features and the read-out.
    hidden: list[Annotated[int, Field(strict=True, ge=1, le=MAX_WIDTH)]] = Field(
        default_factory=list, max_length=MAX_DEPTH
    )
    hidden_bias: StrictBool = True
    output_bias: StrictBool = True
    init: InitSpec = Field(default_factory=lambda: InitSpec(scheme="kaiming"))


class TorchvisionSpec(Strict):
    type: Literal["torchvision"] = "torchvision"
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    num_classes: int | None = Field(None, strict=True, ge=2, le=100_000)


# An entry-point name (the packaging spec allows more; this is what a spec may name).
PLUGIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# The entry-point groups workers load plugins from, and nothing else (edgetune/plugins.py).
MODEL_PLUGINS = "edgetune.models"
DATASET_PLUGINS = "edgetune.datasets"
PluginName = Annotated[str, Field(min_length=1, max_length=100, pattern=PLUGIN_NAME)]
# Keyword arguments for a plugin: JSON values only (no code, no pickles), a few kB at most.
# The default is set on each field (mypy's pydantic plugin does not see one inside Annotated).
PluginKwargs = Annotated[dict[str, JsonValue], Field(max_length=64)]


class PluginModelSpec(Strict):
    """A model from an installed package's `edgetune.models` entry point `name`, built in a
    worker as `build(input_shape=..., num_classes=..., **kwargs)`. The API never imports it."""

    type: Literal["plugin"] = "plugin"
    name: PluginName
    kwargs: PluginKwargs = Field(default_factory=dict)


def _model_type(value: Any) -> str:
    """The `type` tag of a model spec; a spec without one is an MLP (the default model)."""
    if isinstance(value, dict):
        return str(value.get("type", "mlp"))
    return str(getattr(value, "type", "mlp"))


ModelSpec = Annotated[
    Annotated[MLPSpec, Tag("mlp")]
    | Annotated[CNNSpec, Tag("cnn")]
    | Annotated[TorchvisionSpec, Tag("torchvision")]
    | Annotated[PluginModelSpec, Tag("plugin")],
    Discriminator(
        _model_type,
        custom_error_type="model_type_unknown",
        custom_error_message="model.type must be one of 'mlp', 'cnn', 'torchvision', 'plugin'",
    ),
]

DatasetName = Literal[
    "fashion-mnist", "mnist", "digits", "npz", "image-folder", "synthetic", "plugin"
]


class DatasetSpec(Strict):
    name: DatasetName = "fashion-mnist"
    # Folder (IDX datasets, image-folder) or file (npz). Relative paths resolve against the data
    # root; default for IDX datasets is <data_root>/<name>.
    path: str | None = Field(None, max_length=1024)
    # Validation split carved from the training set; the test split is the dataset's own.
    validation_fraction: Number = Field(1 / 12, ge=0.0, lt=1.0)
    # Use at most this many training examples (after the validation split); None = all.
    max_train_samples: int | None = Field(None, strict=True, ge=1)
    # Image size (square) for image-folder and the input shape override for torchvision models.
    image_size: int | None = Field(None, strict=True, ge=4, le=512)
    # Synthetic data only: a seeded Gaussian-mixture classification problem.
    synthetic_samples: int = Field(2048, strict=True, ge=16, le=1_000_000)
    synthetic_features: int = Field(32, strict=True, ge=1, le=65_536)
    synthetic_classes: int = Field(4, strict=True, ge=2, le=1000)
    # name "plugin" only: the `edgetune.datasets` entry point, and its keyword arguments.
    plugin: PluginName | None = Field(None, validate_default=True)
    kwargs: PluginKwargs = Field(default_factory=dict)

    @field_validator("plugin")
    @classmethod
    def _plugin_named(cls, v: str | None, info: ValidationInfo) -> str | None:
        is_plugin = info.data.get("name") == "plugin"
        if is_plugin and v is None:
            raise ValueError("dataset.name 'plugin' needs dataset.plugin (an entry point name)")
        if not is_plugin and v is not None:
            raise ValueError("dataset.plugin needs dataset.name 'plugin'")
        return v

    @field_validator("kwargs")
    @classmethod
    def _plugin_kwargs(cls, v: dict[str, JsonValue], info: ValidationInfo) -> dict[str, JsonValue]:
        if v and info.data.get("name") != "plugin":
            raise ValueError("dataset.kwargs needs dataset.name 'plugin'")
        return v

    @field_validator("path")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("path must not contain NUL bytes")
        if v is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
            # Workers read local files only (no credentials, no network at run time).
            raise ValueError(
                f"path must be a local path under the workers' data roots, not a URL ({v}): "
                "copy the data into a data root (EDGETUNE_DATA_ROOT) and give its relative path"
            )
        return v


# (input shape, classes) of the datasets whose shape is fixed, as the worker's loaders give them
# (worker/data.py; tests/test_build.py checks the two agree). Torch-free, so that the API's limits
# and `edgetune.build_model` know a model's input without loading any data.
FIXED_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
}


def known_shape(spec: DatasetSpec) -> tuple[tuple[int, ...], int] | None:
    """(input shape, classes) of a dataset where the spec alone says; None where only its files
    do (npz, image-folder)."""
    if spec.name in FIXED_SHAPES:
        return FIXED_SHAPES[spec.name]
    if spec.name == "synthetic":
        return (spec.synthetic_features,), spec.synthetic_classes
    return None


class OptimizerSpec(Strict):
    """SGD or AdamW in PyTorch's semantics. `null` = let edgetune recommend it; a number = fixed.

    AdamW's β1, β2 and ε are PyTorch's defaults (0.9, 0.999, 1e-8), fixed; it takes no
    `momentum` or `nesterov`, and its `weight_decay` is the decoupled one."""

    type: Literal["sgd", "adamw"] = "sgd"
    learning_rate: Number | None = Field(None, gt=0, le=10)
    momentum: Number | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, strict=True, ge=1, le=65_536)
    # PyTorch's weight_decay: gradient += weight_decay·W. The paper's λ‖W‖² is weight_decay = 2λ.
    weight_decay: Number | None = Field(None, ge=0, le=1)
    nesterov: StrictBool = False
    # The learning-rate schedule of the run you will do (edgetune/schedules.py): `learning_rate`
    # is then its peak. The probes run at constant rates; the growth law integrates the schedule.
    # null = edgetune recommends one (worker/law.py `run_schedule`: warmup-cosine).
    schedule: Schedule | None = None
    # warmup-cosine only; null = 5 % of the budget.
    warmup_epochs: Number | None = Field(None, ge=0, le=10_000)


class BudgetSpec(Strict):
    epochs: Number = Field(20, gt=0, le=10_000)
    # Probe compute cap, in training samples, as a share of one full `epochs`-long run of one
    # configuration (issue 12: a fifth of a run).
    probe_fraction: Number = Field(0.2, gt=0, le=100)


class RecommendationSpec(Strict):
    # Required: a spec that names no network or no data is a mistake, not a request for the
    # paper's MLP on Fashion-MNIST (MLPSpec() and DatasetSpec() are still those defaults).
    model: ModelSpec
    dataset: DatasetSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    seed: int = Field(0, strict=True, ge=0, le=2**31 - 1)
    verify: StrictBool = False
    callback_url: str | None = Field(None, max_length=2048)

    @field_validator("callback_url")
    @classmethod
    def _no_control_characters(cls, v: str | None) -> str | None:
        # No URL contains them, and PostgreSQL cannot store a NUL byte in the job's spec.
        if v is not None and any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters (NUL, newline, ...)")
        return v

    @model_validator(mode="after")
    def _finite(self) -> RecommendationSpec:
        # allow_inf_nan=False already rejects NaN/inf; this guards derived products.
        if not math.isfinite(self.budget.epochs * self.budget.probe_fraction):
            raise ValueError("budget.epochs × budget.probe_fraction must be finite")
        opt = self.optimizer
        warmup = opt.warmup_epochs
        warms = opt.schedule in ("warmup-cosine", None)
        if warms and warmup is not None and warmup >= self.budget.epochs:
            raise ValueError(
                f"optimizer.warmup_epochs ({warmup:g}) must be shorter than "
                f"budget.epochs ({self.budget.epochs:g})"
            )
        if opt.nesterov and opt.momentum == 0:
            raise ValueError("optimizer.nesterov needs momentum > 0 (PyTorch's rule)")
        if opt.type == "adamw" and (opt.momentum is not None or opt.nesterov):
            raise ValueError(
                "optimizer.momentum and optimizer.nesterov are SGD's: AdamW's β1 (0.9) plays "
                "that part and is fixed; leave them out"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Responses of the HTTP API (app/routes.py). Built from ORM rows by app/service.py.


class JobStatus(StrEnum):
    """queued → running → succeeded | failed | cancelled; a lease that expires puts a running job
    back to queued. The values are the strings the API sends and the database stores."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in one of these states never changes again.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class Progress(BaseModel):
    """How far a job has come; the worker writes it with every heartbeat."""

    phase: str = "queued"
    probes_done: int = 0
    probes_total: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None
    # Why a queued job waits, when it is not just its turn (no live worker has its plugins).
    message: str | None = None


class JobLinks(BaseModel):
    self: str
    recommendation: str
    probes: str
    cancel: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    progress: Progress
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    spec: dict[str, Any]
    links: JobLinks
    # A succeeded job's result in brief, for lists (GET /v1/jobs, and GET /v1/jobs/{id}); null
    # until it has succeeded. The whole result is at links.recommendation.
    result: ResultSummary | None = None


class JobPage(BaseModel):
    jobs: list[JobOut]
    # Pass as page_token for the next page; null on the last page.
    next_page_token: str | None


class ProbeOut(BaseModel):
    key: str
    config: dict[str, Any]
    outcome: str
    seconds: float
    created_at: datetime
    # The measurement time series (step, epoch, per-layer order parameters, loss, accuracy), as the
    # probe engine recorded it.
    records: list[dict[str, Any]]
    # The rest of the probe's stored result (summary numbers), without `records` and `order`.
    summary: dict[str, Any]
    # The order-parameter series the fits read (null for probes stored before it was recorded).
    order: ProbeOrder | None = None


class ProbeList(BaseModel):
    job_id: str
    probes: list[ProbeOut]


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok"]


__all__ = [
    "Activation",
    "BudgetSpec",
    "CNNSpec",
    "ConvBlockSpec",
    "DatasetName",
    "DatasetSpec",
    "FIXED_SHAPES",
    "FieldError",
    "Health",
    "InitSpec",
    "JobLinks",
    "JobOut",
    "JobPage",
    "JobStatus",
    "MAX_DEPTH",
    "MAX_WIDTH",
    "MLPSpec",
    "ModelSpec",
    "DATASET_PLUGINS",
    "MODEL_PLUGINS",
    "OptimizerSpec",
    "PluginModelSpec",
    "ProbeList",
    "ProbeOut",
    "Problem",
    "Progress",
    "RecommendationSpec",
    "Strict",
    "TERMINAL_STATUSES",
    "TorchvisionSpec",
    "known_shape",
]


# ---------------------------------------------------------------------------------------------
# The product: GET /v1/jobs/{id}/recommendation. The worker's engine builds these models; the
# route declares them (so OpenAPI documents every field), the client returns them and the plots
# read them. Numbers that a fit leaves unbounded (±inf) or undefined (NaN) are null.

OrderKind = Literal["J2", "chi"]


class Estimate(BaseModel):
    """A fitted value with its standard error and 95 % interval (null bound: unbounded)."""

    value: float | None
    se: float | None = None
    low: float | None = None
    high: float | None = None


class OrderParameter(BaseModel):
    """Which order parameter the recommendation steers (the edge of chaos is at 1)."""

    name: OrderKind
    description: str


class Trajectory(BaseModel):
    epoch: list[float]
    value: list[float]


class GrowthFit(BaseModel):
    """Linear growth y = y0 + A·t of one probe's order parameter over [t_start, t_end] epochs."""

    A: Estimate
    y0: Estimate
    r2: float | None
    n: int
    t_start: float
    t_end: float
    slope_change: float | None
    curvature_p: float | None
    lag1: float | None
    linear: bool
    chaotic: bool
    crossed_edge: bool
    warnings: list[str] = []


class ExponentFit(BaseModel):
    knob: Literal["eta", "batch", "momentum"]
    value: Estimate
    fitted: bool  # False: the knob did not vary; the theory's exponent 1 is assumed


class ScalingFit(BaseModel):
    """A = k·η^a·(1/B)^b·(1/(1−α))^c over the growth probes; k_theory has every exponent = 1."""

    k: Estimate
    exponents: list[ExponentFit]
    k_theory: Estimate
    theory_consistent: bool
    r2: float | None
    n: int
    dof: int
    weighted: bool
    log_cov: list[list[float | None]]
    q: float | None
    theory_log_var: float | None
    theory_q: float | None
    warnings: list[str] = []


class DecayFit(BaseModel):
    """y(t) = y_eq + (y0 − y_eq)·e^(−D·(t − t0)) fitted to a probe trained with weight decay."""

    A: Estimate
    D: Estimate
    y0: Estimate
    y_eq: Estimate
    t0: float
    r2: float | None
    n: int
    A_fitted: bool
    warnings: list[str] = []


class SaturatingDecay(BaseModel):
    """The weight decay that would hold the order parameter at the edge past the budget."""

    weight_decay: Estimate
    paper_lambda: Estimate
    decay_coefficient: Estimate
    target: float
    warnings: list[str] = []
    note: str | None = None


class ProbeGrowth(BaseModel):
    """One growth probe as the fits saw it."""

    key: str
    learning_rate: float
    momentum: float
    batch_size: int
    effective_rate: float | None = None  # η/((1−α)B), what the growth law depends on
    growth: GrowthFit | None
    note: str | None


class SGDKwargs(BaseModel):
    """`torch.optim.SGD(model.parameters(), **kwargs)`."""

    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool = False


class AdamWKwargs(BaseModel):
    """`torch.optim.AdamW(model.parameters(), **kwargs)`."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float


class ScheduleOut(BaseModel):
    """The recommended run's learning-rate schedule (edgetune/schedules.py shapes), for a
    scheduler stepped once per optimizer step; `edgetune.build_optimizer` builds it."""

    name: Schedule
    warmup_epochs: float = 0.0
    steps_per_epoch: int  # as the probes counted them: train size // batch size
    total_steps: int
    mean_multiplier: float  # the schedule's mean rate / the peak (learning_rate)


class Hyperparameters(BaseModel):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float
    momentum: float  # SGD's; 0 under AdamW (its β1 is in torch_adamw_kwargs)
    batch_size: int
    weight_decay: float
    epochs: float
    paper_lambda: float  # weight_decay / 2: the paper's λ in λ‖W‖²
    effective_rate: float | None = None  # η/((1−α)B), at the peak of a schedule
    # The optimizer's constructor arguments: exactly one of the two is set.
    torch_sgd_kwargs: SGDKwargs | None = None
    torch_adamw_kwargs: AdamWKwargs | None = None
    schedule: ScheduleOut | None = None  # None: constant rate (results before schedules)


class EdgeSummary(BaseModel):
    """Where the recommended run stands relative to the edge of chaos, and the fits behind it."""

    order_parameter: OrderParameter
    initial: float | None = None
    predicted_edge_epoch: float | None = None
    predicted_final: float | None = None
    predicted_trajectory: Trajectory | None = None
    growth_rate_per_epoch: Estimate | None = None
    decay_rate_per_epoch: float | None = None
    k: Estimate | None = None
    growth_law: str | None = None
    scaling: ScalingFit | None = None
    decay_fit: DecayFit | None = None
    decay_coefficient: Estimate | None = None
    saturating_weight_decay: SaturatingDecay | None = None
    probes: list[ProbeGrowth] = []


class Validity(BaseModel):
    ok: bool
    reason: str | None = None  # why there is no recommendation, when there is none
    flags: dict[str, bool]
    warnings: list[str]


class Cost(BaseModel):
    device: str
    probe_seconds: float
    probe_steps: int
    attempts: int
    # Training samples the probes used over those of one full run (budget.epochs × the training
    # set); null in results stored before it was recorded.
    full_run_equivalents: float | None = None


class VerificationTrajectory(BaseModel):
    epoch: list[float]
    measured: list[float]
    predicted: list[float]


class Verification(BaseModel):
    """The recommended configuration trained for its epochs (spec `verify: true`)."""

    outcome: str
    reason: str | None
    seconds: float
    final_val_accuracy: float | None
    final_val_loss: float | None
    trajectory: VerificationTrajectory
    test_loss: float | None = None
    test_accuracy: float | None = None


class Verdict(BaseModel):
    """What to do with the result, in one line: "use it", "use with care: <the reason that
    matters most>", or "don't: <why>, try <a change the spec can express>"."""

    action: Literal["use", "care", "dont"]
    message: str
    # Every caution raised, in the same plain words and the same order (most serious first): the
    # message names the first. Empty for "use it" and in results stored before reasons existed.
    reasons: list[str] = Field(default_factory=list)


class Recommendation(BaseModel):
    """The result of a succeeded job. `hyperparameters` is null when the probes found no
    configuration that reaches the edge; `validity.reason` then says why."""

    verdict: Verdict | None = None  # null only in results stored before verdicts existed
    hyperparameters: Hyperparameters | None
    edge: EdgeSummary
    validity: Validity
    cost: Cost | None = None
    seed: int | None = None
    versions: dict[str, str] | None = None
    device: str | None = None
    verification: Verification | None = None


class ProbeOrder(BaseModel):
    """A probe's order-parameter series as the fits read it, stored by the worker beside the raw
    records: the network summary per record, and each hidden layer's value."""

    kind: OrderKind
    effective_rate: float  # η/((1−α)B) of the probe
    epoch: list[float]
    value: list[float]
    layers: list[list[float]]  # per record, per hidden layer (J² or χ_l)


class ResultSummary(BaseModel):
    """A succeeded job's result in brief: the verdict and the two numbers a list shows.
    `learning_rate` and `batch_size` are null when no configuration reached the edge."""

    verdict: Verdict | None = None  # null only in results stored before verdicts existed
    learning_rate: float | None = None
    batch_size: int | None = None


JobOut.model_rebuild()  # its `result` names ResultSummary, defined after it


__all__ += [
    "Cost",
    "DecayFit",
    "EdgeSummary",
    "Estimate",
    "ExponentFit",
    "GrowthFit",
    "Hyperparameters",
    "OrderKind",
    "OrderParameter",
    "ProbeGrowth",
    "ProbeOrder",
    "Recommendation",
    "ResultSummary",
    "SaturatingDecay",
    "ScalingFit",
    "SGDKwargs",
    "AdamWKwargs",
    "ScheduleOut",
    "Trajectory",
    "Validity",
    "Verdict",
    "Verification",
    "VerificationTrajectory",
]

# The tags of the model union, which pydantic puts into error locations (model.mlp.hidden).
MODEL_TAGS = ("mlp", "cnn", "torchvision", "plugin")


def spec_field(loc: tuple[Any, ...] | list[Any]) -> str:
    """A validation error's location in a spec as the dotted field a user writes: the model
    union's tag left out (model.mlp.hidden → model.hidden)."""
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "model" and parts[1] in MODEL_TAGS:
        parts = [parts[0], *parts[2:]]
    return ".".join(str(p) for p in parts) or "body"


# GET /v1/jobs/{id}/plots/{name}: the plots of a job.
PlotName = Literal["order", "collapse", "growth", "trajectory"]
PLOT_NAMES: tuple[PlotName, ...] = ("order", "collapse", "growth", "trajectory")

__all__ += ["MODEL_TAGS", "PLOT_NAMES", "PlotName", "spec_field"]

# Every order parameter the service reports is normalised so that the edge of chaos is at 1.
EDGE = 1.0

__all__ += ["EDGE"]
