"""Bootstrap intervals (`vtc.stats`) and the speedup interval the timing stores."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reports import timing
from vtc import stats
from vtc.validate.bench import speedup, speedup_interval


def test_interval_covers_the_true_speedup_at_its_level() -> None:
    """Simulated interleaved runs with a known speedup of 1.5 and 8 % noise: the 90 %
    interval holds the truth in about 90 % of runs (binomial slack for 200 runs)."""
    rng = np.random.default_rng(1)
    hits = 0
    for run in range(200):
        base = 10.0 * (1 + 0.08 * rng.standard_normal(40))
        comp = base / 1.5 * (1 + 0.08 * rng.standard_normal(40))
        lo, hi = stats.interval(stats.speedup_draws(base, comp, 1000, seed=run), 0.90)
        hits += lo <= 1.5 <= hi
    assert 0.80 <= hits / 200 <= 0.97


def test_pairing_removes_shared_drift() -> None:
    """A slow drift shared by both engines within each round widens an unpaired
    interval but not the paired one."""
    drift = np.linspace(1.0, 3.0, 30)
    base, comp = 10.0 * drift, 5.0 * drift
    lo, hi = stats.interval(stats.speedup_draws(base, comp), 0.95)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    unpaired = stats.median_draws(base, seed=1) / stats.median_draws(comp, seed=2)
    ulo, uhi = stats.interval(unpaired, 0.95)
    assert uhi - ulo > 0.5


def test_ratio_interval_sees_a_slowdown() -> None:
    rng = np.random.default_rng(3)
    b = 10 * (1 + 0.03 * rng.standard_normal(30))
    before = stats.speedup_draws(b, b / 2.0, seed=1)
    now = stats.speedup_draws(b, b / 1.6, seed=2)
    lo, hi = stats.ratio_interval(now, before, 0.95)
    assert lo <= 0.8 <= hi and hi < 0.9


def test_speedup_interval_from_timings_brackets_the_speedup() -> None:
    base, comp = timing(10.0, seed=1), timing(7.0, seed=2)
    ci = speedup_interval(base, comp, level=0.9, resamples=500, seed=4)
    assert ci.low <= speedup(base, comp) <= ci.high
    assert (ci.level, ci.resamples, ci.seed) == (0.9, 500, 4)


@pytest.mark.parametrize(("base", "comp", "message"), [
    ([], [1.0], "non-empty"),
    ([1.0, 2.0], [1.0], "equal lengths"),
    ([1.0, -1.0], [1.0, 1.0], "> 0"),
    ([1.0, float("nan")], [1.0, 1.0], "finite"),
])
def test_bad_samples_are_refused(base: list[float], comp: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stats.speedup_draws(base, comp)


def test_level_out_of_range() -> None:
    with pytest.raises(ValueError, match="confidence level"):
        stats.interval(np.ones(10), 1.0)
