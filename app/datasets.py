"""Where a dataset's files live, confined to the configured data roots (no torch here).

The API uses this to reject a spec before it is queued; the worker uses it to find the files.
"""

from __future__ import annotations

from pathlib import Path

from app.schemas import DatasetSpec

IDX_DATASETS = ("fashion-mnist", "mnist")
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Datasets that need no file: generated or shipped inside a package (a plugin reads its own).
BUILTIN_DATASETS = ("digits", "synthetic", "plugin")


class DatasetPathError(ValueError):
    """The dataset's files cannot be used; the message names the expected paths."""

    def __init__(self, message: str, field: str = "dataset.path") -> None:
        super().__init__(message)
        self.field = field


def resolve_dataset_path(spec: DatasetSpec, data_roots: list[Path]) -> Path | None:
    """The file or folder a dataset spec refers to, or None for built-in datasets.

    A relative path resolves against each root in turn; an absolute one must lie inside a root.
    Symlinks are resolved first, so `..` or a link cannot reach outside the roots.
    """
    if spec.name in BUILTIN_DATASETS:
        return None
    roots = [r.resolve() for r in data_roots]
    if not roots:
        raise DatasetPathError("no data root is configured (set EDGETUNE_DATA_ROOT)")
    if spec.path is None:
        if spec.name not in IDX_DATASETS:
            raise DatasetPathError(f"dataset.name={spec.name!r} needs dataset.path")
        candidates = [root / spec.name for root in roots]
    else:
        given = Path(spec.path)
        candidates = [given] if given.is_absolute() else [root / given for root in roots]
    resolved = [c.resolve() for c in candidates]
    inside = [p for p in resolved if is_inside_roots(p, roots)]
    if not inside:
        raise DatasetPathError(
            f"dataset.path {spec.path!r} lies outside the data roots "
            f"({', '.join(str(r) for r in roots)})"
        )
    for p in inside:
        if p.exists():
            if spec.name == "image-folder":
                _check_links_inside(p, roots)
            return p
    return inside[0]


def _check_links_inside(folder: Path, roots: list[Path]) -> None:
    """An image folder's train/ and test/ and their class folders, links resolved, must lie
    inside the data roots too: the folder itself being inside is not enough (a linked train/
    would let the API list, and the worker read, files anywhere)."""
    for split in ("train", "test"):
        top = folder / split
        if not top.exists():
            continue
        for part in (top, *(c for c in top.iterdir() if c.is_symlink() or c.is_dir())):
            if not is_inside_roots(part, roots):
                raise DatasetPathError(
                    f"dataset.path {folder.name}/{part.relative_to(folder)} links outside the "
                    f"data roots ({', '.join(str(r) for r in roots)})"
                )


def is_inside_roots(path: Path, data_roots: list[Path]) -> bool:
    """Whether `path`, symlinks resolved, lies inside one of the data roots."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in data_roots)


def missing_files(spec: DatasetSpec, path: Path) -> list[Path]:
    """The files the worker will need under `path` that are not there."""
    if spec.name in IDX_DATASETS:
        return [path / f for f in IDX_FILES if not (path / f).is_file()]
    if spec.name == "npz":
        return [] if path.is_file() else [path]
    if spec.name == "image-folder":
        return [] if (path / "train").is_dir() else [path / "train"]
    return []
