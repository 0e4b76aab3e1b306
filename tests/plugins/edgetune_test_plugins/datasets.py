"""A view of Fashion-MNIST as a user's own dataset: the first `train` and `test` examples of the
copy under the worker's data roots, read-only."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _folder(data_roots: tuple[Path, ...]) -> Path:
    for root in data_roots:
        if (root / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file():
            return root / "fashion-mnist"
    raise ValueError(f"no fashion-mnist under the data roots {[str(r) for r in data_roots]}")


def fashion_mnist_tensors(
    *, data_roots: tuple[Path, ...], train: int = 512, test: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = _folder(data_roots)

    def part(images: str, labels: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = _idx(folder / images)[:n, None].astype(np.float32) / 255.0
        return torch.from_numpy(x), torch.from_numpy(_idx(folder / labels)[:n].astype(np.int64))

    return (
        *part("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", train),
        *part("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", test),
    )


def fashion_mnist_view(
    *, data_roots: tuple[Path, ...], train: int = 512, test: int = 256
) -> tuple[TensorDataset, TensorDataset]:
    """The same examples as map-style Datasets of (image, label)."""
    x, y, x_test, y_test = fashion_mnist_tensors(data_roots=data_roots, train=train, test=test)
    return TensorDataset(x, y), TensorDataset(x_test, y_test)
