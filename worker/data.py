"""Spec → tensors, offline, from a configured data root.

Everything the probes train on fits in memory, so a dataset is loaded once, split once and put on
the device once; probes index it directly (no DataLoader, no per-step host→device copies).
Nothing here downloads.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.datasets import DatasetPathError, is_inside_roots, missing_files, resolve_dataset_path
from app.schemas import DATASET_PLUGINS, DatasetSpec
from edgetune import plugins

# Splits for datasets that ship without their own test split are carved with this fixed seed, so
# every probe of every job sees the same split whatever the probe seeds are.
SPLIT_SEED = 20210720


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_val.to(device),
            self.y_val.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.input_shape,
            self.num_classes,
        )


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape.

    With `ndim`, a file of another rank (images and labels swapped, say) is refused.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetPathError(f"{path} cannot be read: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetPathError(f"{path} is not an unsigned-byte IDX file")
    if ndim is not None and raw[3] != ndim:
        raise DatasetPathError(f"{path} has {raw[3]} dimensions, expected {ndim}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise DatasetPathError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def _confined(path: Path, data_roots: list[Path]) -> Path:
    """`path` itself, refused if a symlink takes it outside the data roots."""
    if not is_inside_roots(path, data_roots):
        raise DatasetPathError(f"{path} points outside the data roots")
    return path


def _idx_dataset(
    folder: Path, data_roots: list[Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def images(stem: str) -> np.ndarray:
        # Pixels / 255, no mean subtraction: the paper's preprocessing.
        raw = read_idx(_confined(folder / stem, data_roots), ndim=3)
        return raw[:, None, :, :].astype(np.float32) / 255.0

    def labels(stem: str) -> np.ndarray:
        return read_idx(_confined(folder / stem, data_roots), ndim=1).astype(np.int64)

    return (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )


def _carve(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, ...]:
    """Split off `fraction` of (x, y) with the fixed split seed; returns (x_a, y_a, x_b, y_b)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_b = int(round(len(x) * fraction))
    b, a = order[:n_b], order[n_b:]
    return x[a], y[a], x[b], y[b]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships its data; never downloads

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


def _synthetic(spec: DatasetSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Gaussian mixture: one centre per class, unit noise; learnable but not trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (spec.synthetic_classes, spec.synthetic_features))
    centres *= 2.0 / np.sqrt(spec.synthetic_features)
    y = rng.integers(0, spec.synthetic_classes, spec.synthetic_samples)
    x = centres[y] * np.sqrt(spec.synthetic_features) / 2 + rng.normal(
        0.0, 1.0, (spec.synthetic_samples, spec.synthetic_features)
    )
    return x.astype(np.float32), y.astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Arrays `x`, `y` (and optionally `x_test`, `y_test`) of an .npz file, checked.

    x is used as it is (cast to float32, no rescaling): (n, features) or (n, C, H, W).
    """
    try:
        # allow_pickle=False: an npz with object arrays is refused, never unpickled.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DatasetPathError(f"{path} is a single .npy array, not an .npz archive")
        with loaded as z:
            if "x" not in z or "y" not in z:
                raise DatasetPathError(
                    f"{path} must hold arrays 'x' and 'y' (found {sorted(z.files)})"
                )
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test") if k in z}
    except DatasetPathError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # Object arrays (allow_pickle=False), a pickle, a truncated or non-zip file.
        raise DatasetPathError(f"{path} is not a readable .npz of plain arrays: {exc}") from exc
    x, y = _features(arrays["x"], path, "x"), _labels(arrays["y"], path, "y")
    if "x_test" in arrays and "y_test" in arrays:
        x_test = _features(arrays["x_test"], path, "x_test")
        y_test = _labels(arrays["y_test"], path, "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetPathError(
                f"{path}: x_test examples have shape {x_test.shape[1:]}, x has {x.shape[1:]}"
            )
        return x, y, x_test, y_test
    return x, y, None, None


def _features(raw: np.ndarray, path: Path, name: str) -> np.ndarray:
    if raw.ndim < 2 or not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
        raise DatasetPathError(
            f"{path}: '{name}' must be a numeric array of shape (n, ...), "
            f"not {raw.dtype} {raw.shape}"
        )
    x = raw.astype(np.float32)
    if not np.isfinite(x).all():
        raise DatasetPathError(f"{path}: '{name}' holds NaN or infinite values")
    return x


def _labels(raw: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Class indices 0…C−1 as int64; one-hot, fractional or negative labels are refused."""
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.number):
        raise DatasetPathError(
            f"{path}: '{name}' must be a 1-D array of class indices, not {raw.dtype} {raw.shape}"
        )
    with np.errstate(invalid="ignore"):
        y = raw.astype(np.int64)
    if not np.array_equal(y, raw) or (y < 0).any():
        raise DatasetPathError(f"{path}: '{name}' must hold non-negative integer class indices")
    return y


def _image_folder(path: Path, size: int | None, data_roots: list[Path]) -> tuple[np.ndarray, ...]:
    """`path/train/<class>/*.png` (and optionally `path/test/<class>/*`), class = folder name.

    Without `image_size` images are read as grey and must all have one size; with it they are
    resized and read as RGB.
    """
    from PIL import Image, UnidentifiedImageError  # pillow comes with torchvision

    classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetPathError(f"{path / 'train'} needs one sub-folder per class (found {classes})")

    def load(split: Path) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted((split / cls).glob("*")):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                    continue
                try:
                    with Image.open(_confined(f, data_roots)) as raw:
                        img = raw.convert("L" if size is None else "RGB")
                except (UnidentifiedImageError, OSError) as exc:
                    raise DatasetPathError(f"{f} is not a readable image: {exc}") from exc
                if size is not None:
                    img = img.resize((size, size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
                xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
                ys.append(label)
        if not xs:
            raise DatasetPathError(f"no images under {split}")
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise DatasetPathError(
                f"images under {split} differ in size {sorted(shapes)[:3]}; set dataset.image_size"
            )
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    x, y = load(path / "train")
    if (path / "test").is_dir():
        xt, yt = load(path / "test")
        return x, y, xt, yt
    return x, y


def _as_arrays(part: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as numpy arrays from a map-style Dataset of (x, y) items."""
    try:
        items = [part[i] for i in range(len(part))]
        x = np.stack([np.asarray(item[0]) for item in items])
        y = np.asarray([int(item[1]) for item in items])
    except (TypeError, ValueError, IndexError) as exc:
        raise DatasetPathError(
            f"{what} must be a map-style Dataset of (x, y) items: {exc}", field="dataset.plugin"
        ) from exc
    return x, y


def _plugin(spec: DatasetSpec, data_roots: list[Path]) -> tuple[np.ndarray, ...]:
    """A dataset plugin's (x_train, y_train, x_test, y_test): its `edgetune.datasets` factory,
    called as build(data_roots=..., **kwargs), returns these four tensors or arrays, or two
    map-style Datasets (train, test) of (x, y) items. Checked like an npz's arrays."""
    assert spec.plugin is not None
    what = f"dataset plugin {spec.plugin!r}"
    try:
        factory = plugins.load(DATASET_PLUGINS, spec.plugin)
    except plugins.PluginNotFound as exc:
        raise DatasetPathError(str(exc), field="dataset.plugin") from exc
    try:
        parts = factory(data_roots=tuple(data_roots), **spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise DatasetPathError(f"{what} refused its kwargs: {exc}", field="dataset.kwargs") from exc
    if isinstance(parts, tuple) and len(parts) == 2:
        parts = (*_as_arrays(parts[0], f"{what}: train"), *_as_arrays(parts[1], f"{what}: test"))
    if not (isinstance(parts, tuple) and len(parts) == 4):
        raise DatasetPathError(
            f"{what} must return (x_train, y_train, x_test, y_test) or (train, test) Datasets",
            field="dataset.plugin",
        )
    arrays = [p.numpy(force=True) if isinstance(p, Tensor) else np.asarray(p) for p in parts]
    origin = Path(what)  # only named in messages
    return (
        _features(arrays[0], origin, "x_train"),
        _labels(arrays[1], origin, "y_train"),
        _features(arrays[2], origin, "x_test"),
        _labels(arrays[3], origin, "y_test"),
    )


def load_dataset(spec: DatasetSpec, data_roots: list[Path], seed: int = 0) -> Dataset:
    """Load and split a dataset on the CPU. Raises DatasetPathError naming missing files.

    The data and every split are a function of the spec alone (fixed SPLIT_SEED, synthetic data
    included): `seed` does not change them, so probes with different seeds see the same data.
    """
    path = resolve_dataset_path(spec, data_roots)
    if path is not None:
        missing = missing_files(spec, path)
        if missing:
            raise DatasetPathError(
                f"dataset {spec.name!r}: missing {', '.join(str(m) for m in missing)} "
                "(nothing is downloaded; put the files there or set dataset.path)"
            )
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    if spec.name in ("fashion-mnist", "mnist"):
        assert path is not None
        x, y, x_test, y_test = _idx_dataset(path, data_roots)
    elif spec.name == "digits":
        x, y = _digits()
        x, y, x_test, y_test = _carve(x, y, 0.2)
    elif spec.name == "plugin":
        x, y, x_test, y_test = _plugin(spec, data_roots)
    elif spec.name == "synthetic":
        x, y = _synthetic(spec, seed=SPLIT_SEED)
        x, y, x_test, y_test = _carve(x, y, 0.2)
    elif spec.name == "npz":
        assert path is not None
        x, y, x_test, y_test = _npz(path)
        if len(x) != len(y):
            raise DatasetPathError(f"{path}: x has {len(x)} examples, y has {len(y)}")
        if x_test is None or y_test is None:
            x, y, x_test, y_test = _carve(x, y, 0.2)
    else:
        assert path is not None
        parts = _image_folder(path, spec.image_size, data_roots)
        if len(parts) == 4:
            x, y, x_test, y_test = parts
        else:
            x, y, x_test, y_test = _carve(parts[0], parts[1], 0.2)
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise DatasetPathError(f"dataset {spec.name!r}: x and y differ in length")
    x_train, y_train, x_val, y_val = _carve(x, y, spec.validation_fraction)
    if spec.max_train_samples is not None:
        x_train, y_train = x_train[: spec.max_train_samples], y_train[: spec.max_train_samples]
    if len(x_train) == 0:
        raise DatasetPathError(f"dataset {spec.name!r} has no training examples after the split")
    num_classes = int(max(y.max(), y_test.max(initial=0))) + 1
    return Dataset(
        name=spec.name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_val=torch.from_numpy(np.ascontiguousarray(x_val)),
        y_val=torch.from_numpy(np.ascontiguousarray(y_val)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=num_classes,
    )
