"""The service's limits on a spec, checked before a job is queued (no torch here).

The schema (app/schemas.py) rejects what is malformed; this module rejects what is well-formed but
too big for this deployment (Settings' max_* fields) or would only fail later in a worker: data
outside the data roots or missing, a CNN on flat data, a feature map that vanishes, an unknown
torchvision model. Each problem names the spec field and, for limits, the limit.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.config import Settings
from app.datasets import DatasetPathError, missing_files, resolve_dataset_path
from app.schemas import (
    CNNSpec,
    DatasetSpec,
    MLPSpec,
    ModelSpec,
    PluginModelSpec,
    RecommendationSpec,
    known_shape,
)
from app.torchvision_models import TORCHVISION_NAMES, torchvision_parameters

# Training examples of the datasets whose shape is fixed (their shapes: edgetune.schemas).
FIXED_TRAIN_SAMPLES = {"fashion-mnist": 60_000, "mnist": 60_000, "digits": 1797}
# The npy header is a short Python dict literal; anything longer is not an array we wrote.
MAX_NPY_HEADER = 65_536


@dataclass(frozen=True)
class Violation:
    field: str
    message: str
    type: str


class ShapeError(ValueError):
    """The model cannot be built on this data; `field` names the spec field to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DataShape:
    """What the API can learn about a dataset without loading it (None = unknown)."""

    input_shape: tuple[int, ...] | None
    num_classes: int
    train_samples: int | None


def parameter_count(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of the model edgetune/nets.py builds for this input, in closed form."""
    if isinstance(model, MLPSpec):
        width = math.prod(input_shape)
        total = 0
        for h in model.hidden:
            total += width * h + (h if model.hidden_bias else 0)
            width = h
        return total + width * num_classes + (num_classes if model.output_bias else 0)
    if isinstance(model, CNNSpec):
        if len(input_shape) != 3:
            raise ShapeError(
                "model.type", f"a CNN needs image input (C, H, W); this dataset gives {input_shape}"
            )
        channels, height, width = input_shape
        total = 0
        for i, block in enumerate(model.blocks):
            k = block.kernel
            total += channels * block.channels * k * k + (
                block.channels if model.hidden_bias else 0
            )
            # Same arithmetic as edgetune/nets.py: padding k//2, then stride, then max-pool.
            height = ((height + 2 * (k // 2) - k) // block.stride + 1) // block.pool
            width = ((width + 2 * (k // 2) - k) // block.stride + 1) // block.pool
            if height < 1 or width < 1:
                raise ShapeError(
                    f"model.blocks.{i}",
                    f"the feature map vanishes at this block for input {input_shape}",
                )
            channels = block.channels
        features = channels * height * width
        for h in model.hidden:
            total += features * h + (h if model.hidden_bias else 0)
            features = h
        return total + features * num_classes + (num_classes if model.output_bias else 0)
    if isinstance(model, PluginModelSpec):
        raise ShapeError("model", "a plugin model's size is known only in a worker")
    count = torchvision_parameters(model.name, model.num_classes or num_classes)
    if count is None:
        raise ShapeError("model.name", _unknown_torchvision(model.name))
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ShapeError(
            "model.type",
            f"torchvision models need 1- or 3-channel images; this dataset gives {input_shape}",
        )
    return count


def _unknown_torchvision(name: str) -> str:
    close = [n for n in TORCHVISION_NAMES if n.startswith(name[:3])][:8]
    hint = f"; similar: {', '.join(close)}" if close else ""
    return (
        f"{name!r} is not a torchvision classification model "
        f"({len(TORCHVISION_NAMES)} known, e.g. resnet18, mobilenet_v3_small{hint})"
    )


def npy_shape(npz: Path, array: str) -> tuple[int, ...]:
    """The shape of `array` in an .npz file, read from its .npy header (no numpy needed)."""
    with zipfile.ZipFile(npz) as archive, archive.open(f"{array}.npy") as fh:
        magic = fh.read(8)
        if magic[:6] != b"\x93NUMPY":
            raise ValueError(f"{array}.npy is not a .npy array")
        major = magic[6]
        size_format = "<H" if major == 1 else "<I"
        (header_len,) = struct.unpack(size_format, fh.read(struct.calcsize(size_format)))
        if header_len > MAX_NPY_HEADER:
            raise ValueError(f"{array}.npy has an implausible header")
        header = ast.literal_eval(fh.read(header_len).decode("latin1"))
    shape = header["shape"] if isinstance(header, dict) else None
    if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
        raise ValueError(f"{array}.npy has no readable shape")
    return shape


def data_shape(spec: DatasetSpec, path: Path | None) -> DataShape:
    """Input shape, classes and training-set size as the worker will see them, where known.

    npz: classes are not read (that needs the labels); 2, the fewest possible, is a lower bound.
    """
    known = known_shape(spec)
    if known is not None:
        return DataShape(*known, FIXED_TRAIN_SAMPLES.get(spec.name))
    if spec.name == "plugin":
        # The API never imports a plugin: what its data looks like is known only in a worker.
        return DataShape(None, 2, None)
    assert path is not None
    if spec.name == "npz":
        x_shape = npy_shape(path, "x")
        y_shape = npy_shape(path, "y")
        if len(x_shape) < 2 or y_shape[:1] != x_shape[:1]:
            raise ValueError(f"x {x_shape} and y {y_shape} do not describe the same examples")
        return DataShape(x_shape[1:], 2, x_shape[0])
    # image-folder: one class per sub-folder of train/; RGB at image_size, else unknown.
    classes = sum(1 for p in (path / "train").iterdir() if p.is_dir())
    size = spec.image_size
    return DataShape((3, size, size) if size else None, max(classes, 2), None)


def check_spec(spec: RecommendationSpec, settings: Settings) -> list[Violation]:
    """Every way `spec` breaks this deployment's limits or could not run; empty = accept."""
    problems: list[Violation] = []

    def limit(field: str, value: float, maximum: float, what: str) -> None:
        if value > maximum:
            problems.append(
                Violation(
                    field, f"{what} {value:g} exceeds this server's limit {maximum:g}", "limit"
                )
            )

    limit("budget.epochs", spec.budget.epochs, settings.max_budget_epochs, "budget of")
    limit(
        "budget.probe_fraction",
        spec.budget.probe_fraction,
        settings.max_probe_fraction,
        "probe budget of",
    )
    data = spec.dataset
    if data.name == "synthetic":
        limit(
            "dataset.synthetic_samples",
            data.synthetic_samples,
            settings.max_train_samples,
            "synthetic dataset of",
        )
    if data.max_train_samples is not None:
        limit(
            "dataset.max_train_samples",
            data.max_train_samples,
            settings.max_train_samples,
            "max_train_samples of",
        )
    if spec.callback_url is not None:
        url = urlsplit(spec.callback_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            problems.append(
                Violation("callback_url", "must be an absolute http:// or https:// URL", "url")
            )

    shape = _dataset_problems(spec.dataset, settings, problems)
    if shape is None:
        # Without the data the parameter count is still known for torchvision models.
        if spec.model.type == "torchvision" and spec.model.name not in TORCHVISION_NAMES:
            problems.append(Violation("model.name", _unknown_torchvision(spec.model.name), "model"))
        return problems
    if shape.train_samples is not None and data.max_train_samples is None:
        training = shape.train_samples - round(shape.train_samples * data.validation_fraction)
        if training > settings.max_train_samples:
            problems.append(
                Violation(
                    "dataset.max_train_samples",
                    f"the dataset has {training} training examples, over this server's limit "
                    f"{settings.max_train_samples}; set dataset.max_train_samples",
                    "limit",
                )
            )
    return problems + _model_problems(spec, shape, settings)


def _model_problems(
    spec: RecommendationSpec, shape: DataShape, settings: Settings
) -> list[Violation]:
    """The model's size against the limits on this data, where the API can know it."""
    input_shape = shape.input_shape
    if isinstance(spec.model, PluginModelSpec):
        # The API never imports a plugin: its size is known only once a worker builds it.
        return [] if input_shape is None else memory_problems(spec, shape, input_shape, settings)
    if input_shape is None:
        # image-folder without image_size: the image size is only known once loaded. The count
        # of a torchvision model does not depend on it.
        if spec.model.type != "torchvision":
            return []
        input_shape = (3, 224, 224)
    try:
        count = parameter_count(spec.model, input_shape, shape.num_classes)
    except ShapeError as exc:
        return [Violation(exc.field, exc.message, "model")]
    problems = []
    if count > settings.max_parameters:
        problems.append(
            Violation(
                "model",
                f"the model has {count:,} parameters on this dataset, over this server's limit "
                f"{settings.max_parameters:,}",
                "limit",
            )
        )
    return problems + memory_problems(spec, shape, input_shape, settings)


# Float32 tensors; synthetic data is drawn in float64 first (worker/data.py).
FLOAT_BYTES = 4
SYNTHETIC_DRAW_BYTES = 8
# The most probes one population trains at once (worker/plan.py), and the largest batch the plan
# uses when the batch size is free (4 × the default 32).
POPULATION = 7
FREE_BATCH = 128
# Activations kept for the backward pass (pre- and post-activation) and their gradients.
ACTIVATION_COPIES = 3
GIB = 2**30


def activation_elements(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Activation values one example produces through the network built for this input."""
    if isinstance(model, MLPSpec):
        return math.prod(input_shape) + sum(model.hidden) + num_classes
    if isinstance(model, CNNSpec):
        channels, height, width = input_shape
        total = channels * height * width
        for block in model.blocks:
            height = (height + 2 * (block.kernel // 2) - block.kernel) // block.stride + 1
            width = (width + 2 * (block.kernel // 2) - block.kernel) // block.stride + 1
            total += block.channels * height * width  # before the pool: the larger map
            height, width = height // block.pool, width // block.pool
        return total + sum(model.hidden) + num_classes
    # torchvision: no closed form here; the parameter limit bounds these models instead.
    return 0


def memory_problems(
    spec: RecommendationSpec, shape: DataShape, input_shape: tuple[int, ...], settings: Settings
) -> list[Violation]:
    """The job's estimated memory (data + activations) against max_job_memory_bytes, each part
    blamed on the spec field that sets it."""
    limit = settings.max_job_memory_bytes
    data = spec.dataset
    if data.name == "synthetic":
        samples, per_value = data.synthetic_samples, SYNTHETIC_DRAW_BYTES
    else:
        samples, per_value = shape.train_samples or 0, FLOAT_BYTES
    if data.max_train_samples is not None:
        samples = min(samples, data.max_train_samples)
    data_bytes = samples * math.prod(input_shape) * per_value
    batch = spec.optimizer.batch_size or FREE_BATCH
    elements = activation_elements(spec.model, input_shape, shape.num_classes)
    activation_bytes = elements * batch * POPULATION * ACTIVATION_COPIES * FLOAT_BYTES
    problems = []
    if data_bytes > limit:
        synthetic = data.name == "synthetic"
        field = "dataset.synthetic_samples" if synthetic else "dataset.max_train_samples"
        problems.append(
            Violation(
                field,
                f"the data needs about {data_bytes / GIB:.3g} GiB in a worker, over this "
                f"server's limit of {limit / GIB:.3g} GiB per job; use fewer examples or features",
                "limit",
            )
        )
    if activation_bytes > limit:
        problems.append(
            Violation(
                "optimizer.batch_size",
                f"the probes' activations need about {activation_bytes / GIB:.3g} GiB at batch "
                f"size {batch} ({POPULATION} probes train at once), over this server's limit of "
                f"{limit / GIB:.3g} GiB per job; fix a smaller optimizer.batch_size or a narrower "
                "model",
                "limit",
            )
        )
    return problems


def _dataset_problems(
    spec: DatasetSpec, settings: Settings, problems: list[Violation]
) -> DataShape | None:
    """Check the dataset's files; its shape when they are usable, else None (problems added)."""
    try:
        path = resolve_dataset_path(spec, settings.data_roots)
    except DatasetPathError as exc:
        problems.append(Violation(exc.field, str(exc), "data"))
        return None
    if path is not None:
        missing = missing_files(spec, path)
        if missing:
            names = ", ".join(str(m) for m in missing)
            problems.append(
                Violation("dataset.path", f"dataset {spec.name!r}: missing {names}", "data")
            )
            return None
    try:
        return data_shape(spec, path)
    except (OSError, ValueError, KeyError, SyntaxError, zipfile.BadZipFile) as exc:
        problems.append(
            Violation("dataset.path", f"cannot read dataset {spec.name!r} at {path}: {exc}", "data")
        )
        return None
