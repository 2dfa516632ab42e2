"""Datasets bundled with scikit-image: the labelled ``lfw_subset`` and four colour photos."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from vtc.data.split import DatasetError

LFW_CLASSES: tuple[str, ...] = ("face", "non-face")
LFW_PER_CLASS = 100  # skimage docs: the first 100 images are faces, the next 100 non-faces
LFW_SIDE = 25
PHOTOS: tuple[str, ...] = ("chelsea", "coffee", "astronaut", "rocket")


def skimage_version() -> str:
    """The installed scikit-image version, or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-image")
    except PackageNotFoundError:
        return "not installed"


def _data_module() -> object:
    try:
        import skimage.data
    except ImportError as exc:
        raise DatasetError(f"scikit-image is not importable ({exc}); reinstall vtc's "
                           "dependencies (make setup)") from None
    return skimage.data


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (or integers 0..255) as uint8, rounded."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """skimage's ``lfw_subset``: read-only uint8 images ``[200, 25, 25]`` (the stored
    floats in [0, 1], ×255 rounded) and int64 labels ``[200]``: 0 face, 1 non-face."""
    data = _data_module()
    try:
        raw = np.asarray(data.lfw_subset())  # type: ignore[attr-defined]
    except Exception as exc:  # skimage raises various errors when its data file is gone
        raise DatasetError(f"skimage.data.lfw_subset() failed: {exc}") from None
    want = (2 * LFW_PER_CLASS, LFW_SIDE, LFW_SIDE)
    if raw.shape != want:
        raise DatasetError(f"skimage.data.lfw_subset(): expected shape {list(want)}, got "
                           f"{list(raw.shape)} (scikit-image {skimage_version()})")
    images = _to_uint8(raw)
    labels = np.repeat(np.arange(2, dtype=np.int64), LFW_PER_CLASS)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def photo(name: str) -> np.ndarray:
    """One of PHOTOS as uint8 ``[H, W, 3]``."""
    if name not in PHOTOS:
        raise DatasetError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    data = _data_module()
    try:
        img = np.asarray(getattr(data, name)())
    except Exception as exc:
        raise DatasetError(f"skimage.data.{name}() failed: {exc}") from None
    if img.ndim != 3 or img.shape[-1] != 3:
        raise DatasetError(f"skimage.data.{name}(): expected [H, W, 3], got {list(img.shape)}")
    return np.ascontiguousarray(_to_uint8(img))


def photos() -> dict[str, np.ndarray]:
    """All PHOTOS, name -> uint8 ``[H, W, 3]`` (sizes differ; unlabelled)."""
    return {name: photo(name) for name in PHOTOS}
