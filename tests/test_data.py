"""Datasets (worker/data.py, app/datasets.py): real files from the shared folder, files written to
tmp_path, and paths that try to leave the data root."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.datasets import DatasetPathError, resolve_dataset_path
from app.schemas import DatasetSpec
from worker.data import Dataset, load_dataset


def _require(root: Path, name: str) -> Path:
    folder = root / name
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{folder} is not there (set EDGETUNE_DATA_ROOT)")
    return folder


@pytest.fixture(scope="module")
def fashion(data_root: Path) -> Dataset:
    _require(data_root, "fashion-mnist")
    return load_dataset(DatasetSpec(name="fashion-mnist"), [data_root])


# --- the real IDX datasets ----------------------------------------------------------------------


def test_fashion_mnist_shapes_and_split(fashion):
    assert fashion.x_train.shape == (55_000, 1, 28, 28)
    assert fashion.x_val.shape == (5_000, 1, 28, 28)
    assert fashion.x_test.shape == (10_000, 1, 28, 28)
    assert (fashion.y_train.shape, fashion.y_val.shape, fashion.y_test.shape) == (
        (55_000,),
        (5_000,),
        (10_000,),
    )
    assert fashion.input_shape == (1, 28, 28) and fashion.num_classes == 10
    assert fashion.train_size == 55_000
    assert fashion.x_train.dtype == torch.float32 and fashion.y_train.dtype == torch.int64


def test_fashion_mnist_values(fashion):
    # Pixels / 255 without mean subtraction (the paper's); the published train mean is 0.2860.
    assert float(fashion.x_train.min()) == 0.0 and float(fashion.x_train.max()) == 1.0
    assert float(fashion.x_train.mean()) == pytest.approx(0.2860, abs=5e-4)
    assert int(fashion.y_test[0]) == 9  # the test set starts with an ankle boot
    # Fashion-MNIST is balanced: 6000 per class in train+val, 1000 per class in test.
    train_counts = torch.bincount(torch.cat([fashion.y_train, fashion.y_val]), minlength=10)
    assert train_counts.tolist() == [6000] * 10
    assert torch.bincount(fashion.y_test).tolist() == [1000] * 10


def test_validation_split_is_disjoint_and_fixed(fashion, data_root):
    # Same split on every load, whatever the probe seed; val and train do not share images.
    again = load_dataset(
        DatasetSpec(name="fashion-mnist", max_train_samples=100), [data_root], seed=123
    )
    assert torch.equal(again.x_val, fashion.x_val)
    assert torch.equal(again.x_train, fashion.x_train[:100])
    train_keys = {bytes(x.numpy()) for x in fashion.x_train[:2000]}
    assert not train_keys & {bytes(x.numpy()) for x in fashion.x_val[:2000]}


def test_validation_fraction_zero_and_max_train_samples(data_root):
    _require(data_root, "mnist")
    d = load_dataset(
        DatasetSpec(name="mnist", validation_fraction=0.0, max_train_samples=1000), [data_root]
    )
    assert d.x_train.shape == (1000, 1, 28, 28) and d.y_train.shape == (1000,)
    assert d.x_val.shape == (0, 1, 28, 28) and d.y_val.shape == (0,)
    assert d.x_test.shape == (10_000, 1, 28, 28)
    assert int(d.y_test[0]) == 7  # MNIST's first test digit
    assert float(d.x_test.mean()) == pytest.approx(0.1325, abs=5e-4)


def test_to_moves_every_tensor(fashion):
    small = Dataset(
        "s",
        *(t[:4] for t in (fashion.x_train, fashion.y_train, fashion.x_val, fashion.y_val)),
        fashion.x_test[:4],
        fashion.y_test[:4],
        fashion.input_shape,
        fashion.num_classes,
    )
    moved = small.to("meta")
    assert all(
        t.device.type == "meta"
        for t in (moved.x_train, moved.y_train, moved.x_val, moved.y_val, moved.x_test)
    )
    assert moved.input_shape == small.input_shape


# --- built-in datasets --------------------------------------------------------------------------


def test_digits():
    d = load_dataset(DatasetSpec(name="digits", validation_fraction=0.1), [])
    n_train, n_val, n_test = len(d.x_train), len(d.x_val), len(d.x_test)
    assert n_train + n_val + n_test == 1797
    assert n_test == round(1797 * 0.2) and n_val == round((1797 - n_test) * 0.1)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0


def test_synthetic_is_seeded_and_deterministic():
    spec = DatasetSpec(
        name="synthetic", synthetic_samples=500, synthetic_features=12, synthetic_classes=3
    )
    a, b = load_dataset(spec, []), load_dataset(spec, [], seed=7)
    for t, u in zip(
        (a.x_train, a.y_train, a.x_val, a.x_test),
        (b.x_train, b.y_train, b.x_val, b.x_test),
        strict=True,
    ):
        assert torch.equal(t, u)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 500
    assert a.input_shape == (12,) and a.num_classes == 3
    # Learnable: the nearest class mean (fit on train) beats chance on test by a wide margin.
    means = torch.stack([a.x_train[a.y_train == c].mean(0) for c in range(3)])
    predicted = torch.cdist(a.x_test, means).argmin(1)
    assert float((predicted == a.y_test).float().mean()) > 0.6


# --- npz ----------------------------------------------------------------------------------------


def _npz_spec(path: str, **kw) -> DatasetSpec:
    return DatasetSpec(name="npz", path=path, **kw)


def test_npz_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)).astype(np.float64)
    y = rng.integers(0, 3, 100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(_npz_spec("d.npz", validation_fraction=0.25), [tmp_path])
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (60, 20, 20)
    assert d.input_shape == (5,) and d.num_classes == 3
    # Every example survives the splits, paired with its own label.
    rows = {tuple(np.round(r, 5)): int(c) for r, c in zip(x.astype(np.float32), y, strict=True)}
    for xs, ys in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        for r, c in zip(xs.numpy(), ys.tolist(), strict=True):
            assert rows[tuple(np.round(r, 5))] == c


def test_npz_with_its_own_test_split(tmp_path):
    x = np.arange(40 * 4, dtype=np.uint8).reshape(40, 1, 2, 2)
    np.savez(
        tmp_path / "d.npz",
        x=x,
        y=np.arange(40) % 4,
        x_test=x[:8],
        y_test=np.full(8, 5),
    )
    d = load_dataset(_npz_spec(str(tmp_path / "d.npz"), validation_fraction=0.0), [tmp_path])
    assert len(d.x_train) == 40 and len(d.x_test) == 8
    assert torch.equal(d.x_test, torch.from_numpy(x[:8].astype(np.float32)))
    assert d.input_shape == (1, 2, 2)
    assert d.num_classes == 6  # the largest label anywhere, plus one


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.array([object(), 1], dtype=object), "y": np.zeros(2)}, "not a readable"),
        ({"x": np.zeros((4, 2)), "z": np.zeros(4)}, "'x' and 'y'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(5)}, "x has 4 examples, y has 5"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "non-negative integer"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1.5, 1, 0])}, "non-negative integer"),
        ({"x": np.zeros((4, 2)), "y": np.eye(4)}, "1-D array of class indices"),
        ({"x": np.array([[0.0, np.nan]] * 4), "y": np.zeros(4)}, "NaN"),
        ({"x": np.zeros(4), "y": np.zeros(4)}, r"shape \(n, \.\.\.\)"),
        ({"x": np.array([["a", "b"]] * 4), "y": np.zeros(4)}, "numeric"),
    ],
    ids=["object", "no-y", "length", "negative", "fractional", "one-hot", "nan", "1-d", "strings"],
)
def test_npz_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetPathError, match=message):
        load_dataset(_npz_spec("bad.npz"), [tmp_path])


def test_npz_that_is_not_an_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((4, 2)))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    for name in ("one.npy", "junk.npz"):
        with pytest.raises(DatasetPathError):
            load_dataset(_npz_spec(name), [tmp_path])


# --- image folder -------------------------------------------------------------------------------


def _write_images(folder: Path, classes: dict[str, int], size: int = 6, mode: str = "L") -> None:
    for c, (name, n) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            value = 40 * c + i
            Image.new(mode, (size, size), value if mode == "L" else (value,) * 3).save(
                folder / name / f"{i}.png"
            )


def test_image_folder_grey(tmp_path):
    _write_images(tmp_path / "imgs" / "train", {"cat": 5, "dog": 5})
    _write_images(tmp_path / "imgs" / "test", {"cat": 2, "dog": 3})
    (tmp_path / "imgs" / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset(
        DatasetSpec(name="image-folder", path="imgs", validation_fraction=0.2), [tmp_path]
    )
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (8, 2, 5)
    assert d.input_shape == (1, 6, 6) and d.num_classes == 2
    assert d.y_test.tolist() == [0, 0, 1, 1, 1]  # classes in folder-name order
    # Each image is one flat grey value: 40·class + index, over 255; labels follow the folders.
    for x, y in zip(d.x_train, d.y_train, strict=True):
        value = round(float(x[0, 0, 0]) * 255)
        assert value // 40 == int(y) and torch.all(x == x[0, 0, 0])


def test_image_folder_resized_to_rgb_without_test_split(tmp_path):
    _write_images(tmp_path / "train", {"a": 5, "b": 5, "c": 5}, size=9, mode="RGB")
    d = load_dataset(
        DatasetSpec(name="image-folder", path=".", image_size=4, validation_fraction=0.0),
        [tmp_path],
    )
    assert d.input_shape == (3, 4, 4) and d.num_classes == 3
    assert len(d.x_train) + len(d.x_test) == 15 and len(d.x_test) == 3


def test_image_folder_problems(tmp_path):
    spec = DatasetSpec(name="image-folder", path="imgs")
    with pytest.raises(DatasetPathError, match="train"):
        load_dataset(spec, [tmp_path])  # nothing there
    _write_images(tmp_path / "imgs" / "train", {"only": 3})
    with pytest.raises(DatasetPathError, match="one sub-folder per class"):
        load_dataset(spec, [tmp_path])
    _write_images(tmp_path / "imgs" / "train", {"other": 3}, size=7)
    with pytest.raises(DatasetPathError, match="differ in size"):
        load_dataset(spec, [tmp_path])
    (tmp_path / "imgs" / "train" / "other" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DatasetPathError, match="9.png"):
        load_dataset(DatasetSpec(name="image-folder", path="imgs", image_size=7), [tmp_path])


def test_image_folder_symlink_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    _write_images(root / "imgs" / "train", {"a": 3, "b": 3})
    _write_images(outside, {"secret": 1})
    os.symlink(outside / "secret" / "0.png", root / "imgs" / "train" / "a" / "link.png")
    with pytest.raises(DatasetPathError, match="outside the data roots"):
        load_dataset(DatasetSpec(name="image-folder", path="imgs"), [root])


# --- paths confined to the data roots -----------------------------------------------------------


def test_missing_files_are_named(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetPathError) as exc:
        load_dataset(DatasetSpec(name="fashion-mnist"), [tmp_path])
    message = str(exc.value)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        assert str(tmp_path / "fashion-mnist" / name) in message
    assert "train-images" not in message
    assert "nothing is downloaded" in message
    with pytest.raises(DatasetPathError, match=str(tmp_path / "nope.npz")):
        load_dataset(_npz_spec("nope.npz"), [tmp_path])


def test_corrupt_idx_files_are_refused(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    names = ("train-images", "train-labels", "t10k-images", "t10k-labels")
    for name in names:
        (folder / f"{name}-idx{1 if 'labels' in name else 3}-ubyte.gz").write_bytes(b"")
    # Labels where the images should be: a one-dimensional IDX file.
    labels = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(labels)
    with pytest.raises(DatasetPathError, match="1 dimensions, expected 3"):
        load_dataset(DatasetSpec(name="mnist"), [tmp_path])
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DatasetPathError, match="cannot be read"):
        load_dataset(DatasetSpec(name="mnist"), [tmp_path])


@pytest.mark.parametrize("path", ["../outside/d.npz", "sub/../../outside/d.npz", "ABS", "LINK"])
def test_paths_escaping_the_data_root_are_refused(tmp_path, path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    np.savez(outside / "d.npz", x=np.zeros((10, 2)), y=np.zeros(10))
    os.symlink(outside / "d.npz", root / "link.npz")
    path = {"ABS": str(outside / "d.npz"), "LINK": "link.npz"}.get(path, path)
    spec = _npz_spec(path)
    with pytest.raises(DatasetPathError, match="outside the data roots") as exc:
        load_dataset(spec, [root])
    assert exc.value.field == "dataset.path"
    with pytest.raises(DatasetPathError):
        resolve_dataset_path(spec, [root])
    # The same file is fine once it is inside a root.
    assert len(load_dataset(spec, [root, outside]).x_train) > 0


def test_symlinked_idx_folder_out_of_the_root_is_refused(tmp_path, data_root):
    fashion = _require(data_root, "fashion-mnist")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(fashion, root / "fashion-mnist")
    with pytest.raises(DatasetPathError, match="outside the data roots"):
        load_dataset(DatasetSpec(name="fashion-mnist"), [root])
    # One file linked out from an otherwise real folder is refused too.
    folder = tmp_path / "root2" / "mnist"
    folder.mkdir(parents=True)
    for f in (data_root / "mnist").glob("*-ubyte.gz"):
        os.symlink(f, folder / f.name)
    with pytest.raises(DatasetPathError, match="points outside the data roots"):
        load_dataset(DatasetSpec(name="mnist"), [tmp_path / "root2"])


def test_no_data_root_and_npz_without_path():
    with pytest.raises(DatasetPathError, match="EDGETUNE_DATA_ROOT"):
        load_dataset(DatasetSpec(name="fashion-mnist"), [])
    with pytest.raises(DatasetPathError, match="needs dataset.path"):
        load_dataset(DatasetSpec(name="npz"), [Path("/tmp")])
