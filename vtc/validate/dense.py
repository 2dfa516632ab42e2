"""Fidelity of dense outputs (depth, saliency or segmentation-logit maps).

Per image: the Pearson correlation of the two maps, and the IoU of their
"high" regions, both maps thresholded at the same value (the ``quantile`` of
the baseline map). Maps with K > 1 channels (``[N, K, H, W]``, e.g. per-class
logits) are scored over all K·H·W values of an image.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _maps(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 4:
        arr = arr.reshape(arr.shape[0], -1, arr.shape[-1])  # channels stacked along H
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{name}: expected maps [N, K, H, W] or [N, H, W], got "
                         f"{list(np.asarray(x).shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got {arr.dtype}")
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flat maps ``[P]``. A constant map has no correlation:
    both constant gives 1.0 when equal, else 0.0; one constant gives 0.0."""
    da, db = a - a.mean(), b - b.mean()
    va, vb = float(np.dot(da, da)), float(np.dot(db, db))
    if va == 0.0 or vb == 0.0:
        return 1.0 if va == vb == 0.0 and np.array_equal(a, b) else 0.0
    return float(np.clip(np.dot(da, db) / np.sqrt(va * vb), -1.0, 1.0))


def iou_at(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """IoU of ``a > threshold`` and ``b > threshold`` (flat maps ``[P]``); both empty -> 1.0."""
    ma, mb = a > threshold, b > threshold
    union = int(np.count_nonzero(ma | mb))
    return 1.0 if union == 0 else int(np.count_nonzero(ma & mb)) / union


def dense_fidelity(base: np.ndarray, comp: np.ndarray, quantile: float = 0.8) -> dict[str, Any]:
    """Compare uncompressed ``base`` and compressed ``comp`` dense maps, each
    ``[N, 1, H, W]`` or ``[N, H, W]`` (same shape).

    Per image: Pearson correlation, and the IoU of both maps thresholded at the base
    map's own ``quantile`` value (``> threshold``; both regions empty -> 1.0).
    Returns n, pearson_mean, pearson_min, iou_mean, iou_min, threshold_quantile and
    the per-image lists ``pearson`` and ``iou`` (``[N]`` each). Raises ValueError on
    a shape mismatch, a bad shape, non-finite values, or a quantile outside [0, 1)."""
    b_shape, c_shape = np.shape(base), np.shape(comp)
    if b_shape != c_shape:
        raise ValueError(f"dense outputs differ in shape: base {list(b_shape)}, "
                         f"compressed {list(c_shape)}")
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}")
    b, c = _maps(base, "base"), _maps(comp, "compressed")
    corr = [pearson(bi, ci) for bi, ci in zip(b, c, strict=True)]
    iou = [iou_at(bi, ci, float(np.quantile(bi, quantile))) for bi, ci in zip(b, c, strict=True)]
    return {
        "n": int(b.shape[0]),
        "pearson_mean": float(np.mean(corr)),
        "pearson_min": float(np.min(corr)),
        "iou_mean": float(np.mean(iou)),
        "iou_min": float(np.min(iou)),
        "threshold_quantile": float(quantile),
        "pearson": corr,
        "iou": iou,
    }
