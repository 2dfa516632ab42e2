"""Labelled datasets and test photos for accuracy and dense-output checks.

Registry: ``names()``, ``load(name, n_train, n_test, seed) -> Split``, ``photos()``,
``describe()``; ``to_model_input`` turns uint8 images into a normalised model batch.

- ``fashion-mnist``: Debian package ``dataset-fashion-mnist`` (60k train / 10k test,
  28×28 gray, 10 classes); train and test come from the official sets.
- ``lfw-subset``: scikit-image's ``lfw_subset`` (200 images, 25×25 gray, face /
  non-face), split into train and test with a fixed seed.

Submodules are imported lazily so that ``import vtc.data`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vtc.data.split import DatasetError, Split

if TYPE_CHECKING:
    from vtc.data.images import Size

_ALIASES = {"fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "lfw-subset": "lfw-subset", "lfw": "lfw-subset"}


def names() -> list[str]:
    """Names ``load`` accepts (canonical spellings)."""
    return ["fashion-mnist", "lfw-subset"]


def canonical(name: str) -> str:
    """``name`` in canonical spelling (case and ``_``/``-`` insensitive), or DatasetError."""
    key = name.strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    return _ALIASES[key]


def _check_n(n: int | None, what: str) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1):
        raise DatasetError(f"{what} must be a positive integer or None, got {n!r}")


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct indices into ``labels [N]``, class proportions kept (largest
    remainder), drawn with ``rng`` and returned in shuffled order: int64 ``[n]``."""
    total = int(labels.shape[0])
    if n > total:
        raise DatasetError(f"asked for {n} images but only {total} are available")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    quota = np.floor(exact).astype(np.int64)
    extra = n - int(quota.sum())
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:extra]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota, strict=True)
        if q > 0
    ]
    return rng.permutation(np.concatenate(picked).astype(np.int64))


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent train and test streams: the test subset does not depend on n_train."""
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


def _fashion(n_train: int | None, n_test: int | None, seed: int) -> Split:
    from vtc.data import fashion_mnist as fm

    folder = fm.locate()
    tr_rng, te_rng = _rngs(seed)
    parts: list[np.ndarray] = []
    how: list[str] = []
    for split, n, rng in (("train", n_train, tr_rng), ("test", n_test, te_rng)):
        images, labels = fm.read_split(split, folder)
        if n is None:
            idx = np.arange(len(labels))
            how.append(f"{split}: all {len(labels)} of the official {split} set")
        else:
            idx = stratified_sample(labels, n, rng)
            how.append(f"{split}: {n} of the official {split} set ({len(labels)}), "
                       f"class-stratified, fixed seed")
        parts += [images[idx], labels[idx]]
    source = str(folder) + (f" (Debian package {fm.PACKAGE})" if folder == fm.SYSTEM_DIR else "")
    tr_x, tr_y, te_x, te_y = parts
    return Split("fashion-mnist", tr_x, tr_y, te_x, te_y, classes=fm.CLASSES, source=source,
                 seed=seed, selection="; ".join(how))


def _lfw(n_train: int | None, n_test: int | None, seed: int) -> Split:
    from vtc.data import skimage_sets as sk

    images, labels = sk.lfw_subset()
    total = len(labels)
    if n_train is None and n_test is None:
        n_test = total // 2
    if n_test is None:
        n_test = total - int(n_train or 0)
    if n_train is None:
        n_train = total - n_test
    if n_train + n_test > total:
        raise DatasetError(f"lfw-subset has {total} images; n_train + n_test = "
                           f"{n_train + n_test} is too many")
    if n_test < 1 or n_train < 1:
        raise DatasetError(f"lfw-subset: n_train and n_test must each be >= 1 (total {total})")
    tr_rng, te_rng = _rngs(seed)
    test_idx = stratified_sample(labels, n_test, te_rng)
    rest = np.setdiff1d(np.arange(total), test_idx)
    train_idx = rest[stratified_sample(labels[rest], n_train, tr_rng)]
    return Split(
        "lfw-subset", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
        classes=sk.LFW_CLASSES,
        source=f"skimage.data.lfw_subset() (scikit-image {sk.skimage_version()})",
        seed=seed,
        selection="disjoint class-stratified fixed-seed train/test split of the 200 images "
                  "(test drawn first)",
    )


_LOADERS: dict[str, Callable[[int | None, int | None, int], Split]] = {
    "fashion-mnist": _fashion,
    "lfw-subset": _lfw,
}


def load(name: str, n_train: int | None = None, n_test: int | None = None,
         seed: int = 0) -> Split:
    """Load dataset ``name`` (see ``names()``).

    ``n_train`` / ``n_test``: image counts, each a fixed-seed class-stratified
    subsample (None: all of the official split; for lfw-subset, None splits the
    200 images 100/100 or gives the rest). Raises DatasetError when the dataset is
    missing or corrupt, or the counts cannot be served."""
    _check_n(n_train, "n_train")
    _check_n(n_test, "n_test")
    return _LOADERS[canonical(name)](n_train, n_test, int(seed))


def photos() -> dict[str, np.ndarray]:
    """scikit-image's colour photos (chelsea, coffee, astronaut, rocket): name ->
    uint8 ``[H, W, 3]``, sizes differ. Unlabelled; for dense/fidelity checks."""
    from vtc.data import skimage_sets as sk

    return sk.photos()


def photo_batch(size: Size, mean: Sequence[float], std: Sequence[float], channels: int = 3,
                resize: str = "stretch") -> np.ndarray:
    """The photos as one model input, float32 ``[4, channels, H, W]`` (see to_model_input)."""
    return np.concatenate([to_model_input(p[None], size, mean, std, channels, resize)
                           for p in photos().values()])


def describe() -> list[dict[str, Any]]:
    """One row per dataset for ``vtc data list``: name, n_classes, n_train, n_test,
    image, installed, where. Reads file headers only."""
    from vtc.data import fashion_mnist as fm
    from vtc.data import skimage_sets as sk

    folder = fm.find()
    row: dict[str, Any] = {"name": "fashion-mnist", "n_classes": len(fm.CLASSES),
                           "image": "28x28 gray", "installed": folder is not None}
    if folder is None:
        row.update(n_train=fm.SPLITS["train"][2], n_test=fm.SPLITS["test"][2],
                   where="not installed: vtc data install fashion-mnist")
    else:
        try:
            row.update(n_train=fm.header_count(folder, "train"),
                       n_test=fm.header_count(folder, "test"), where=str(folder))
        except DatasetError as exc:
            row.update(n_train=None, n_test=None, installed=False, where=f"corrupt: {exc}")
    version = sk.skimage_version()
    have_sk = version != "not installed"
    return [
        row,
        {"name": "lfw-subset", "n_classes": 2, "n_train": 100, "n_test": 100,
         "image": "25x25 gray", "installed": have_sk,
         "where": f"scikit-image {version} (bundled; split of 200 images)"},
        {"name": "photos", "n_classes": 0, "n_train": None, "n_test": len(sk.PHOTOS),
         "image": "RGB, sizes vary", "installed": have_sk,
         "where": f"scikit-image {version}: {', '.join(sk.PHOTOS)} (unlabelled)"},
    ]


def to_model_input(images: np.ndarray, size: Size, mean: Sequence[float],
                   std: Sequence[float], channels: int = 3, resize: str = "stretch"
                   ) -> np.ndarray:
    """uint8 images ``[N, h, w]`` (gray) or ``[N, h, w, 3]`` -> normalised float32
    ``[N, channels, H, W]``: each image brought to ``channels`` (gray copied to RGB,
    RGB to luma) and to H×W by ``resize`` (`vtc.data.images.fit`; default: the whole
    image resized, no crop), scaled to [0, 1], then ``(x - mean) / std``.
    Memory is N·channels·H·W·4 bytes: subsample first."""
    from PIL import Image

    from vtc.data.images import fit, hw, normalize

    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {arr.dtype}")
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ValueError(f"expected [N, H, W] or [N, H, W, 3] images, got {list(arr.shape)}")
    h, w = hw(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = np.empty((arr.shape[0], h, w, channels), dtype=np.float32)
    for i, img in enumerate(arr):
        pil = Image.fromarray(np.ascontiguousarray(img), "L" if img.ndim == 2 else "RGB")
        out[i] = fit(pil, (h, w), resize, channels)
    return normalize(out, mean, std)


__all__ = [
    "DatasetError",
    "Split",
    "canonical",
    "describe",
    "load",
    "names",
    "photos",
    "stratified_sample",
    "to_model_input",
]
