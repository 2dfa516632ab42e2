"""Input batches for validation: real images from a folder, or a synthetic batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit gray images scaled to 8 bits (PIL's convert("RGB") would clip every
    value above 255 to white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    return img


def _preprocess(img: Image.Image, size: int) -> np.ndarray:
    """RGB (16-bit gray scaled, not clipped); shorter side -> round(size·256/224)
    (bicubic); center crop.

    Returns float32 ``[size, size, 3]`` in [0, 1]."""
    img = _to_8bit(img).convert("RGB")
    short = round(size * 256 / 224)
    w, h = img.size
    if w <= h:
        nw, nh = short, max(1, round(h * short / w))
    else:
        nw, nh = max(1, round(w * short / h)), short
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left = round((nw - size) / 2.0)
    top = round((nh - size) / 2.0)
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.float32) / 255.0


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} / {list(std)}")


def normalize(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(rgb - mean) / std`` per channel, channels moved first.

    ``rgb`` is float ``[N, H, W, 3]`` in [0, 1]; returns contiguous float32
    ``[N, 3, H, W]``. Raises ValueError unless mean and std have 3 values."""
    _check_mean_std(mean, std)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] RGB values, got shape {list(rgb.shape)}")
    m = np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, 3)
    s = np.asarray(std, dtype=np.float32).reshape(1, 1, 1, 3)
    out = (rgb.astype(np.float32, copy=False) - m) / s
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def load_images(
    folder: Path,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    limit: int | None = None,
) -> np.ndarray:
    """Load images under ``folder`` (recursively, sorted by path) as normalized
    float32 ``[N, 3, size, size]``. Unreadable files are skipped; a ValueError is
    raised when none can be read."""
    folder = Path(folder)
    _check_mean_std(mean, std)
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
                arr = _preprocess(img, size)
        except (UnidentifiedImageError, OSError):
            continue
        out.append(arr)
    if not out:
        raise ValueError(
            f"no readable images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
            f"{len(files)} candidate file(s) found)"
        )
    return normalize(np.stack(out), mean, std)


def synthetic_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Fixed-seed standard-normal float32 ``[n, 3, size, size]`` (already 'normalized')."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size), dtype=np.float32)


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
