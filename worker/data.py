"""Spec → tensors, offline, from a configured data root.

Everything the probes train on fits in memory, so a dataset is loaded once, split once and put on
the device once; probes index it directly (no DataLoader, no per-step host→device copies).
Nothing here downloads.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from app.datasets import DatasetPathError, missing_files, resolve_dataset_path
from app.schemas import DatasetSpec

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


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetPathError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise DatasetPathError(f"{path} is truncated: header says {dims}, found {data.size} bytes")
    return data.reshape(dims)


def _idx_dataset(name: str, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def images(stem: str) -> np.ndarray:
        # Pixels / 255, no mean subtraction: the paper's preprocessing.
        return read_idx(folder / stem)[:, None, :, :].astype(np.float32) / 255.0

    def labels(stem: str) -> np.ndarray:
        return read_idx(folder / stem).astype(np.int64)

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
    # allow_pickle=False: an npz with object arrays is refused, never unpickled.
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise DatasetPathError(f"{path} must hold arrays 'x' and 'y' (found {sorted(z.files)})")
        x = np.asarray(z["x"], dtype=np.float32)
        y = np.asarray(z["y"]).astype(np.int64)
        if "x_test" in z and "y_test" in z:
            return (
                x,
                y,
                np.asarray(z["x_test"], np.float32),
                np.asarray(z["y_test"]).astype(np.int64),
            )
    return x, y, None, None


def _image_folder(path: Path, size: int | None) -> tuple[np.ndarray, ...]:
    """`path/train/<class>/*.png` (and optionally `path/test/<class>/*`), class = folder name."""
    from PIL import Image  # pillow comes with torchvision

    classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetPathError(f"{path / 'train'} needs one sub-folder per class (found {classes})")

    def load(split: Path) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted((split / cls).glob("*")):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                    continue
                img = Image.open(f).convert("L" if size is None else "RGB")
                if size is not None:
                    img = img.resize((size, size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
                xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
                ys.append(label)
        if not xs:
            raise DatasetPathError(f"no images under {split}")
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    x, y = load(path / "train")
    if (path / "test").is_dir():
        xt, yt = load(path / "test")
        return x, y, xt, yt
    return x, y


def load_dataset(spec: DatasetSpec, data_roots: list[Path], seed: int = 0) -> Dataset:
    """Load and split a dataset on the CPU. Raises DatasetPathError naming missing files."""
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
        x, y, x_test, y_test = _idx_dataset(spec.name, path)
    elif spec.name == "digits":
        x, y = _digits()
        x, y, x_test, y_test = _carve(x, y, 0.2)
    elif spec.name == "synthetic":
        x, y = _synthetic(spec, seed=SPLIT_SEED)
        x, y, x_test, y_test = _carve(x, y, 0.2)
    elif spec.name == "npz":
        assert path is not None
        x, y, x_test, y_test = _npz(path)
        if x_test is None or y_test is None:
            x, y, x_test, y_test = _carve(x, y, 0.2)
    else:
        assert path is not None
        parts = _image_folder(path, spec.image_size)
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
    num_classes = int(max(y.max(), y_test.max())) + 1
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
