"""Bootstrap intervals for timing figures: how sure a measured speedup is.

Timings are taken round-robin (`vtc.validate.bench`), so round i gives one
baseline sample b_i and one compressed sample c_i measured moments apart. The
paired speedup estimate is exp(trimmed mean of log(b_i / c_i)) — the geometric
mean of the per-round ratios, the lowest and highest TRIM of them dropped. On this
project's CPU machine single calls are bimodal (two latency levels, each about
half the calls): a median jumps between the levels and its bootstrap interval is
about twice as wide as the trimmed paired mean's, which is just as robust to a
stalled round. Its interval resamples *rounds* with replacement — (b_i, c_i)
together — and takes percentiles of the recomputed estimates.

Comparing two runs (`vtc check`) resamples each run's rounds independently and
forms the ratio of the two recomputed estimates: the interval of
speedup_now / speedup_baseline, which carries the noise of both runs.

All arrays are 1-D float latencies `[n]` (any unit, the same for both).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
SEED = 0
TRIM = 0.1  # fraction dropped at each end before averaging
# fewer interleaved rounds than this give a bootstrap with too few distinct values to
# stand for a run's noise: speed verdicts (the min_speedup gate, `vtc check`'s speed
# rows, the payoff line) are not given, and say so
MIN_ROUNDS = 10

# "advisory": speed verdicts are still measured and printed but decide no exit code
# (the min_speedup/min_efficiency gates are set aside with that reason, `vtc check`'s
# speed rows turn FAIL into info). For shared CI runners, whose timings a neighbour's
# load can swing by more than any interval allows; "enforce" (the default) judges them.
SPEED_ENV = "VTC_SPEED_GATES"


def speed_advisory() -> bool:
    """Whether ``$VTC_SPEED_GATES`` is ``advisory`` (unset or ``enforce``: False).

    Raises `vtc.errors.InputError` for any other value."""
    import os

    from vtc.errors import InputError

    value = os.environ.get(SPEED_ENV, "enforce").strip().lower() or "enforce"
    if value not in ("enforce", "advisory"):
        raise InputError(f"{SPEED_ENV}={value!r}: expected 'enforce' (the default) or "
                         "'advisory' (speed measured and reported, not gated)")
    return value == "advisory"


def _trimmed_mean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis after dropping the TRIM fraction at each end."""
    n = x.shape[-1]
    k = int(n * TRIM)
    return np.sort(x, axis=-1)[..., k:n - k].mean(axis=-1)  # type: ignore[no-any-return]


def _rounds(x: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D sequence of samples, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name}: samples must be finite and > 0")
    return arr


def _log_ratios(base: Sequence[float], comp: Sequence[float]) -> np.ndarray:
    b, c = _rounds(base, "baseline"), _rounds(comp, "compressed")
    if b.size != c.size:
        raise ValueError(f"paired samples need equal lengths, got {b.size} and {c.size}")
    return np.log(b / c)  # type: ignore[no-any-return]


def paired_speedup(base: Sequence[float], comp: Sequence[float]) -> float:
    """exp(trimmed mean of log(base_i / comp_i)): the paired speedup estimate."""
    return float(np.exp(_trimmed_mean(_log_ratios(base, comp))))


def speedup_draws(base: Sequence[float], comp: Sequence[float], resamples: int = RESAMPLES,
                  seed: int = SEED) -> np.ndarray:
    """`[resamples]` bootstrap draws of `paired_speedup`, rounds resampled together.

    `base` and `comp` are the per-round latencies of one interleaved run (same length).
    """
    lr = _log_ratios(base, comp)
    idx = np.random.default_rng(seed).integers(0, lr.size, size=(resamples, lr.size))
    return np.exp(_trimmed_mean(lr[idx]))  # type: ignore[no-any-return]


def location(x: Sequence[float]) -> float:
    """exp(trimmed mean of log x): a latency's robust typical value."""
    return float(np.exp(_trimmed_mean(np.log(_rounds(x, "samples")))))


def location_draws(x: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED
                   ) -> np.ndarray:
    """`[resamples]` bootstrap draws of `location(x)`."""
    lx = np.log(_rounds(x, "samples"))
    idx = np.random.default_rng(seed).integers(0, lx.size, size=(resamples, lx.size))
    return np.exp(_trimmed_mean(lx[idx]))  # type: ignore[no-any-return]


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
