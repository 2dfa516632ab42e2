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
    unpaired = stats.location_draws(base, seed=1) / stats.location_draws(comp, seed=2)
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
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(speedup(base, comp), rel=0.05)
    assert (ci.level, ci.resamples, ci.seed) == (0.9, 500, 4)


def test_the_trimmed_paired_estimate_shrugs_off_stalled_rounds() -> None:
    """Two rounds of 20 where the compressed call stalled 5x: the trimmed estimate stays
    at the true 2.0; an untrimmed geometric mean would fall by about 15 %."""
    base = np.full(20, 10.0)
    comp = np.full(20, 5.0)
    comp[[3, 11]] = 25.0
    assert stats.paired_speedup(base, comp) == pytest.approx(2.0)
    assert float(np.exp(np.log(base / comp).mean())) < 1.75


def test_bimodal_calls_give_a_tighter_paired_interval_than_medians() -> None:
    """Calls alternating between two latency levels at random (as on this machine): the
    paired trimmed interval is narrower than a ratio of bootstrapped medians."""
    rng = np.random.default_rng(5)
    level = lambda: np.where(rng.random(20) < 0.5, 1.0, 1.15)  # noqa: E731
    base, comp = 10.0 * level(), 6.0 * level()
    lo, hi = stats.interval(stats.speedup_draws(base, comp), 0.95)
    idx = rng.integers(0, 20, (2000, 20))
    med = np.median(base[idx], 1) / np.median(comp[idx], 1)
    mlo, mhi = stats.interval(med, 0.95)
    assert hi - lo < mhi - mlo


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
