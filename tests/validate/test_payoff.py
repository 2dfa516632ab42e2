"""Did compression pay off: the verdict from the paired interval, and a budget the FLOPs
model suggests when it did not (said to be a suggestion, never a measurement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reports import sample_report, timing
from vtc.budget import Geometry
from vtc.recipe import load_recipe
from vtc.report import Report
from vtc.stages.bundle import judge
from vtc.validate.payoff import MARGIN, payoff

VIT_B = Geometry(tokens=197, protected=1, width=768, mlp_width=3072, layers=12)


def _timed(est: float, low: float, high: float, flops_ratio: float = 1.31) -> Report:
    report = sample_report(dense=None)  # logits
    assert report.throughput is not None
    ci = report.throughput.speedup_ci
    ci.estimate, ci.low, ci.high = est, low, high
    report.throughput.speedup = est
    report.budget.flops_ratio = flops_ratio
    return report


def test_slower_says_so_and_suggests_the_smallest_r_that_would_pay() -> None:
    recipe = load_recipe("tome-r8")
    report = _timed(0.85, 0.81, 0.89)
    judge(report, recipe, bench=True, geo=VIT_B)
    p = report.payoff
    assert p is not None and p.verdict == "slower"
    assert p.message.startswith("compression does not pay off on this model: the compressed "
                                "engine is slower than the uncompressed one (0.85× [0.81, 0.89]")
    eff = 0.85 / 1.31
    assert p.target_speedup == pytest.approx(MARGIN) and \
        p.target_flops_ratio == pytest.approx(MARGIN / eff, abs=1e-3)
    assert p.suggestion is not None and p.suggestion.startswith("--set tome.r=")
    r = int(p.suggestion.rsplit("=", 1)[1])
    assert p.suggestion_flops_ratio is not None and p.suggestion_flops_ratio >= p.target_flops_ratio
    milder = load_recipe("tome-r8", [f"tome.r={r - 1}"]).budget(VIT_B).flops_ratio
    assert milder < p.target_flops_ratio  # the smallest r that reaches it
    assert load_recipe("tome-r8", [f"tome.r={r}"]).budget(VIT_B).flops_ratio == pytest.approx(
        p.suggestion_flops_ratio, abs=1e-4)
    assert "the FLOPs model, not a measurement" in p.basis


def test_within_noise_is_no_payoff_and_a_clear_gain_pays() -> None:
    recipe = load_recipe("tome-r8")
    noise = _timed(1.02, 0.95, 1.08)
    judge(noise, recipe, bench=True, geo=VIT_B)
    assert noise.payoff is not None and noise.payoff.verdict == "noise"
    assert "no faster than the uncompressed engine beyond timing noise" in noise.payoff.message
    assert noise.passed  # the gate does not flap on noise; the payoff line says what it is
    pays = _timed(1.49, 1.42, 1.57)
    judge(pays, recipe, bench=True, geo=VIT_B)
    assert pays.payoff is not None and pays.payoff.verdict == "pays"
    assert pays.payoff.suggestion is None


def test_a_failed_higher_gate_aims_above_it() -> None:
    recipe = load_recipe("tome-r8", ["gates.min_speedup=1.5"])
    report = _timed(1.2, 1.1, 1.3)
    judge(report, recipe, bench=True, geo=VIT_B)
    p = report.payoff
    assert not report.passed and p is not None and p.verdict == "below_gate"
    assert p.target_speedup == pytest.approx(1.5 * MARGIN)


def test_evit_suggests_a_lower_keep_rate() -> None:
    report = _timed(0.9, 0.85, 0.95, flops_ratio=1.51)
    judge(report, load_recipe("evit-keep70"), bench=True, geo=VIT_B)
    p = report.payoff
    assert p is not None and p.suggestion is not None
    assert p.suggestion.startswith("--set evit.keep_rate=")
    assert float(p.suggestion.rsplit("=", 1)[1]) < 0.7


def test_unreachable_says_compression_is_unlikely_to_pay() -> None:
    tiny = Geometry(tokens=17, protected=1, width=64, mlp_width=128, layers=3)
    report = _timed(0.2, 0.1, 0.3, flops_ratio=1.91)
    judge(report, load_recipe("tome-r8"), bench=True, geo=tiny)
    p = report.payoff
    assert p is not None and p.suggestion is None
    assert "no budget of this recipe's methods reaches it" in p.basis
    assert "compression is unlikely to pay off on this model" in p.basis


def test_no_payoff_without_enough_rounds_or_a_reduction() -> None:
    recipe = load_recipe("tome-r8")
    few = _timed(0.5, 0.4, 0.6)
    assert few.throughput is not None
    few.throughput.compressed = timing(7.0, n=2)
    assert payoff(few, recipe, VIT_B) is None
    assert payoff(_timed(0.9, 0.8, 1.0, flops_ratio=1.0), recipe, VIT_B) is None
    assert payoff(sample_report(throughput=None), recipe, VIT_B) is None


def test_export_summary_says_it_in_plain_words() -> None:
    from vtc.cli.export import summary

    report = _timed(0.85, 0.81, 0.89)
    judge(report, load_recipe("tome-r8"), bench=True, geo=VIT_B)
    text = summary(report, Path("out/b"))
    rows = {ln.split(maxsplit=1)[0]: ln.split(maxsplit=1)[1] for ln in text.splitlines()}
    assert text.splitlines()[0].split() == ["gates", "FAIL:", "min_speedup", "(2", "skipped)"]
    assert rows["speedup"].startswith("0.85× [0.81, 0.89] (paired, 95% interval, 20 rounds")
    assert rows["payoff"].startswith("compression does not pay off on this model")
    assert rows["try"].startswith("--set tome.r=") and "not measured" in rows["try"]
