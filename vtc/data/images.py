"""Input batches for validation: real images from a folder, or a synthetic batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from vtc.runtime import fit as runtime_fit

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".ppm",
    ".tif",
    ".tiff",
)
# what opening or decoding an image raises when Pillow cannot read it safely (unreadable,
# truncated, a decompression bomb): such a file is skipped wherever images are read
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


Size = int | tuple[int, int]  # a square side, or (height, width)
Resize = Literal["crop", "pad", "stretch"]
RESIZE_MODES: tuple[str, ...] = ("crop", "pad", "stretch")


def hw(size: Size) -> tuple[int, int]:
    """A size as ``(height, width)``."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def fit(img: Image.Image, size: Size, resize: str = "crop", channels: int = 3) -> np.ndarray:
    """One image → float32 ``[H, W, channels]`` in [0, 1] (16-bit gray scaled, not
    clipped; ``channels`` 1: PIL's luma ``L``, 3: RGB, gray copied).

    ``crop``: scale (bicubic) until the image covers ``round(H·256/224) ×
    round(W·256/224)``, then center-crop H×W (the ImageNet convention); ``pad``: scale
    to fit inside H×W keeping the aspect ratio, centred on black; ``stretch``: resize
    the whole image to H×W."""
    h, w = hw(size)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    # one implementation: the torch-free runtime's, so a bundle preprocesses on a device
    # exactly as vtc validated it
    return runtime_fit(img, h, w, resize, channels)


def _check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int = 3) -> None:
    if len(mean) != channels or len(std) != channels:
        what = "RGB" if channels == 3 else f"{channels} channel{'s' * (channels > 1)}"
        raise ValueError(f"mean and std need {channels} values ({what}), got {list(mean)} / "
                         f"{list(std)}")


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per channel, channels moved first.

    ``rgb`` is float ``[N, H, W, C]`` in [0, 1] (C = 1 or 3); returns contiguous
    float32 ``[N, C, H, W]``. Raises ValueError unless mean and std have C values."""
    if rgb.ndim != 4 or rgb.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W, 3] RGB or [N, H, W, 1] gray values, got shape "
                         f"{list(rgb.shape)}")
    c = int(rgb.shape[-1])
    _check_mean_std(mean, std, c)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, c)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, c)
    out = (rgb.astype(np.float32, copy=False) - m) / s
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def load_images(
    folder: Path,
    size: Size,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None = None,
    channels: int = 3,
    resize: str = "crop",
) -> np.ndarray:
    """Load images under ``folder`` (recursively, sorted by path) as normalized
    float32 ``[N, channels, H, W]`` (``fit`` with ``resize``). Unreadable files are
    skipped; a ValueError is raised when none can be read."""
    folder = Path(folder)
    _check_mean_std(mean, std, channels)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    out: list[np.ndarray] = []
    for path in files:
        if limit is not None and len(out) >= limit:
            break
        try:
            with Image.open(path) as img:
                arr = fit(img, size, resize, channels)
        except UNREADABLE:
            continue  # unreadable, or too large for Pillow to open safely: skipped
        out.append(arr)
    if not out:
        raise ValueError(
            f"no readable images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
            f"{len(files)} candidate file(s) found)"
        )
    return normalize(np.stack(out), mean, std)


def synthetic_batch(n: int, size: Size, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Fixed-seed standard-normal float32 ``[n, channels, H, W]`` (already 'normalized')."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, channels, *hw(size)), dtype=np.float32)


def batches(arr: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """Split ``arr [N, ...]`` into full ``[batch, ...]`` chunks for static-batch engines.

    Yields ``(chunk, n_real)``: the last chunk is padded with repeats of the
    first images (cyclically when ``N < batch``); only its first ``n_real`` rows
    are real and should be scored.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n = int(arr.shape[0])
    if n == 0:
        raise ValueError("cannot batch an empty array")
    for start in range(0, n, batch):
        real = min(batch, n - start)
        if real == batch:
            yield arr[start : start + batch], batch
        else:
            pad_idx = np.arange(batch - real) % n
            yield np.concatenate([arr[start:], arr[pad_idx]], axis=0), real
