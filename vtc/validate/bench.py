"""Interleaved latency measurement of several runners on the same batch.

Timing the candidates round-robin (one call each per round, starting position
rotated every round) spreads clock boosts, thermal drift and background noise
evenly over them, which back-to-back blocks of runs do not. A rotation keeps each
runner's predecessor fixed; with runners of several runtimes (whose worker threads
may still spin on the cores after a call returns) `shuffle_seed` draws each round's
order at random instead, so that no runner always follows the same one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

from vtc import stats
from vtc.report import IntervalInfo, ThroughputInfo, TimingInfo

Timing = TimingInfo  # the report's type: measured here, stored as is


def _timing(samples_s: list[float], batch: int) -> Timing:
    arr = np.asarray(samples_s, dtype=np.float64)
    p50 = float(np.median(arr))
    return Timing(
        p50_ms=p50 * 1e3,
        p95_ms=float(np.percentile(arr, 95)) * 1e3,
        mean_ms=float(np.mean(arr)) * 1e3,
        img_per_s=batch / p50 if p50 > 0 else float("inf"),
        n=len(samples_s),
        batch=batch,
        samples_ms=[t * 1e3 for t in samples_s],
    )


def measure_interleaved(
    runners: Mapping[str, Callable[[], object]],
    batch: int,
    warmup: int = 3,
    repeats: int = 20,
    progress: Callable[[str], None] | None = None,
    min_time_s: float = 0.0,
    shuffle_seed: int | None = None,
) -> dict[str, Timing]:
    """Time each zero-argument callable (one call = one batch of ``batch`` images).

    Every runner is first called ``warmup`` times, then rounds run until at
    least ``repeats`` rounds are done and every runner has accumulated
    ``min_time_s`` seconds of measured time; each round calls every runner once,
    the start rotated every round, or (``shuffle_seed`` given) in an order drawn at
    random per round from that seed. Callables must block until their result is
    ready (synchronise the GPU inside them).
    """
    if not runners:
        raise ValueError("no runners to measure")
    if batch < 1 or repeats < 1 or warmup < 0 or min_time_s < 0:
        raise ValueError(
            f"need batch >= 1, repeats >= 1, warmup >= 0, min_time_s >= 0; got "
            f"batch={batch}, repeats={repeats}, warmup={warmup}, min_time_s={min_time_s}"
        )
    names = list(runners)
    for name in names:
        if progress is not None:
            progress(f"warmup {name} ({warmup} calls)")
        for _ in range(warmup):
            runners[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    totals = dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    rnd = 0
    while rnd < repeats or min(totals.values()) < min_time_s:
        shift = rnd % len(names)
        order = (names[shift:] + names[:shift] if rng is None
                 else [names[i] for i in rng.permutation(len(names))])
        for name in order:
            fn = runners[name]
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            samples[name].append(dt)
            totals[name] += dt
        rnd += 1
        if progress is not None:
            progress(
                f"round {rnd}: "
                + ", ".join(f"{n} {np.median(samples[n]) * 1e3:.2f} ms" for n in names)
            )
    return {n: _timing(samples[n], batch) for n in names}


def speedup(base: Timing, comp: Timing) -> float:
    """Median-latency speedup of ``comp`` over ``base`` (> 1 means comp is faster)."""
    if comp.p50_ms <= 0:
        raise ValueError("compressed median latency is zero; cannot form a speedup")
    return base.p50_ms / comp.p50_ms


STATISTIC = (f"paired speedup: exp(mean of log(baseline_i / compressed_i) over the rounds, "
             f"{stats.TRIM:.0%} trimmed at each end)")


def speedup_interval(base: Timing, comp: Timing, level: float = 0.95,
                     resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> IntervalInfo:
    """The paired speedup estimate and its bootstrap interval over the interleaved
    rounds (`vtc.stats`: geometric mean of per-round ratios, 10 % trimmed each end)."""
    draws = stats.speedup_draws(base.samples_ms, comp.samples_ms, resamples, seed)
    low, high = stats.interval(draws, level)
    return IntervalInfo(statistic=STATISTIC,
                        estimate=stats.paired_speedup(base.samples_ms, comp.samples_ms),
                        low=low, high=high, level=level, resamples=resamples, seed=seed)


METHOD = ("interleaved round-robin after warm-up; speedup: the paired estimate over the "
          "rounds; img/s: batch / median latency")


def throughput_info(timings: Mapping[str, Timing], batch: int, flops_ratio: float
                    ) -> ThroughputInfo:
    """The report's throughput tier from `measure_interleaved` results keyed `baseline`,
    `compressed` and optionally `eager`, `eager_compressed`."""
    base, comp = timings["baseline"], timings["compressed"]
    ci = speedup_interval(base, comp)
    eager, eager_c = timings.get("eager"), timings.get("eager_compressed")
    return ThroughputInfo(
        batch=batch, baseline_ips=base.img_per_s, compressed_ips=comp.img_per_s,
        eager_ips=eager.img_per_s if eager else None,
        eager_compressed_ips=eager_c.img_per_s if eager_c else None,
        speedup=ci.estimate, speedup_ci=ci, efficiency=ci.estimate / flops_ratio,
        baseline=base, compressed=comp, eager=eager, eager_compressed=eager_c, method=METHOD,
        speedup_median=speedup(base, comp))
