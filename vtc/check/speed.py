"""Noise-aware speed verdicts: compare two runs' interleaved timings.

Speedup (compressed vs uncompressed, measured side by side in one run) is
machine-independent, so it is always compared, as the paired estimate every other view
shows too (`vtc.report.speedup_text`; `vtc.stats`:
geometric mean of per-round ratios, trimmed). Each run's rounds are resampled
(paired within a run, runs independent) and the verdict reads the interval of
speedup_now / speedup_baseline:

    whole interval below 1 - max_speedup_drop   → FAIL (a slowdown beyond noise)
    otherwise                                   → pass

Absolute throughput of the compressed engine (trimmed geometric-mean latency, same
bootstrap) is
compared only on the same machine fingerprint; on another one the row is skipped
and says which fields differ. Under ``VTC_SPEED_GATES=advisory`` a failing row is
shown as info (with what would have failed) and decides no exit code.
"""

from __future__ import annotations

from dataclasses import replace

from vtc import stats
from vtc.backends.machine import differences
from vtc.check.rows import Row
from vtc.recipe import CheckCfg
from vtc.report import Report, ThroughputInfo, speedup_text

__all__ = ["MIN_ROUNDS", "advisory", "paired_row", "speed_rows"]

MIN_ROUNDS = stats.MIN_ROUNDS  # fewer rounds: the speed rows are skipped and say so


def _pct(x: float) -> str:
    return f"{(x - 1) * 100:+.1f}%"


def _ratio_row(metric: str, before: str, now: str, lo: float, hi: float, point: float,
               allowed: float, level: float) -> Row:
    floor = 1 - allowed
    failed = hi < floor
    change = f"{_pct(point)} [{_pct(lo)}, {_pct(hi)}]"
    note = (f"the {level:.0%} interval lies below the allowed -{allowed:.0%}" if failed else
            f"allowed -{allowed:.0%}; the {level:.0%} interval reaches {_pct(hi)}")
    return Row(metric, before, now, change, "FAIL" if failed else "pass", note,
               values={"ratio": point, "ratio_low": lo, "ratio_high": hi, "floor": floor})


def paired_row(metric: str, base: tuple[list[float], list[float]],
               now: tuple[list[float], list[float]], before: str, after: str, tol: CheckCfg,
               point: float | None = None) -> Row:
    """The change of a paired speedup between two runs, each given as its per-round
    (uncut, cut) latencies in ms, judged on the bootstrap interval of now / baseline.
    `point`: the estimate of that ratio when the reports store one (else recomputed)."""
    db = stats.speedup_draws(*base, seed=1)
    dn = stats.speedup_draws(*now, seed=2)
    lo, hi = stats.ratio_interval(dn, db, tol.confidence)
    if point is None:
        point = stats.paired_speedup(*now) / stats.paired_speedup(*base)
    return _ratio_row(metric, before, after, lo, hi, point, tol.max_speedup_drop,
                      tol.confidence)


def _speedup(b: ThroughputInfo, n: ThroughputInfo, tol: CheckCfg) -> Row:
    return paired_row("throughput.speedup", (b.baseline.samples_ms, b.compressed.samples_ms),
                      (n.baseline.samples_ms, n.compressed.samples_ms), speedup_text(b, 3),
                      speedup_text(n, 3), tol,
                      point=n.speedup_ci.estimate / b.speedup_ci.estimate)


def _throughput(base: Report, now: Report, tol: CheckCfg) -> Row:
    b, n = base.throughput, now.throughput
    assert b is not None and n is not None
    metric = "throughput.compressed_ips"
    before, after = f"{b.compressed_ips:.4g} img/s", f"{n.compressed_ips:.4g} img/s"
    diff = differences(base.machine, now.machine)
    if diff:
        return Row(metric, before, after, "", "skip",
                   "another machine (" + "; ".join(diff) + "): only the speedup is compared")
    # images/s ratio now/before = typical latency before / now
    db = stats.location_draws(b.compressed.samples_ms, seed=3)
    dn = stats.location_draws(n.compressed.samples_ms, seed=4)
    lo, hi = stats.ratio_interval(db, dn, tol.confidence)
    point = stats.location(b.compressed.samples_ms) / stats.location(n.compressed.samples_ms)
    return _ratio_row(metric, before, after, lo, hi, point, tol.max_throughput_drop,
                      tol.confidence)


def speed_rows(base: Report, now: Report, tol: CheckCfg) -> list[Row]:
    """The speedup row and the absolute-throughput row (skipped rows say why)."""
    if base.throughput is None or now.throughput is None:
        which = "the baseline" if base.throughput is None else "this bundle"
        return [Row(m, "", "", "", "skip", f"not timed in {which} (built with --no-bench)")
                for m in ("throughput.speedup", "throughput.compressed_ips")]
    rounds = min(t.compressed.n for t in (base.throughput, now.throughput))
    if rounds < MIN_ROUNDS:
        return [Row(m, "", "", "", "skip", f"{rounds} timed rounds; a noise-aware verdict "
                    f"needs >= {MIN_ROUNDS} (validate.repeats)")
                for m in ("throughput.speedup", "throughput.compressed_ips")]
    return advisory([_speedup(base.throughput, now.throughput, tol),
                     _throughput(base, now, tol)])


def advisory(rows: list[Row]) -> list[Row]:
    """Under ``VTC_SPEED_GATES=advisory`` a failing speed row becomes info, saying what
    would have failed; otherwise the rows as they are."""
    if not stats.speed_advisory():
        return rows
    return [replace(r, verdict="info", note=f"advisory ({stats.SPEED_ENV}=advisory), "
                    f"would fail: {r.note}") if r.verdict == "FAIL" else r for r in rows]
