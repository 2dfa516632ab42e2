"""Bootstrap intervals for timing figures: how sure a measured speedup is.

Timings are taken round-robin (`vtc.validate.bench`), so round i gives one
baseline sample b_i and one compressed sample c_i measured moments apart. The
speedup is median(b) / median(c). Its interval resamples *rounds* with
replacement — (b_i, c_i) together — so that drift shared by both engines within a
round stays paired, and takes percentiles of the recomputed speedups.

Comparing two runs (`vtc check`) resamples each run's rounds independently and
forms the ratio of the two recomputed statistics: the interval of
speedup_now / speedup_baseline, which carries the noise of both runs.

All arrays are 1-D float latencies `[n]` (any unit, the same for both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0


def _rounds(x: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D sequence of samples, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: samples must be finite and > 0")
    return arr


def _resample_medians(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Median of each resampling: `idx` is `[resamples, n]` row indices into `arr`."""
    return np.median(arr[idx], axis=1)  # type: ignore[no-any-return]


def speedup_draws(base: Sequence[float], comp: Sequence[float], resamples: int = RESAMPLES,
                  seed: int = SEED) -> np.ndarray:
    """`[resamples]` bootstrap draws of median(base) / median(comp), rounds paired.

    `base` and `comp` are the per-round latencies of one interleaved run (same length).
    """
    b, c = _rounds(base, "baseline"), _rounds(comp, "compressed")
    if b.size != c.size:
        raise ValueError(f"paired samples need equal lengths, got {b.size} and {c.size}")
    idx = np.random.default_rng(seed).integers(0, b.size, size=(resamples, b.size))
    return _resample_medians(b, idx) / _resample_medians(c, idx)


def median_draws(x: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
                 ) -> np.ndarray:
    """`[resamples]` bootstrap draws of median(x)."""
    arr = _rounds(x, "samples")
    idx = np.random.default_rng(seed).integers(0, arr.size, size=(resamples, arr.size))
    return _resample_medians(arr, idx)


def interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap `draws`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return float(lo), float(hi)


def ratio_interval(now: np.ndarray, before: np.ndarray, level: float) -> tuple[float, float]:
    """Interval of now / before from two runs' independent bootstrap draws (same count)."""
    if now.shape != before.shape:
        raise ValueError(f"draws differ in shape: {now.shape} vs {before.shape}")
    return interval(now / before, level)
