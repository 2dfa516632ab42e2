from __future__ import annotations

import math

import pytest

from tests.reports import sample_report
from vtc.report import FIDELITY_SCOPE, Report, Stats, lookup
from vtc.validate.gates import GATES, Gate, applicable, evaluate_gates, format_gate


def _set(report: Report, path: tuple[str, ...], value: object) -> Report:
    setattr(lookup(report, path[:-1]), path[-1], value)
    return report


def _report() -> Report:
    r = sample_report()
    for path, v in [(("throughput", "speedup_ci", "high"), 1.42),
                    (("throughput", "efficiency"), 0.8),
                    (("parity", "engine", "max_abs_diff"), 3.1e-6),
                    (("parity", "export", "max_abs_diff"), 2e-3),
                    (("fidelity", "cosine_mean"), 0.9987), (("fidelity", "top1_agreement"), None),
                    (("budget", "flops_ratio"), 2.1)]:
        _set(r, path, v)
    return r


REPORT = _report()


def test_pass_and_fail() -> None:
    gates = evaluate_gates(
        REPORT,
        {
            "min_speedup": 1.8,
            "max_parity_diff": 1e-4,
            "max_export_diff": 1e-3,
            "min_fidelity_cosine": 0.999,
            "min_flops_ratio": 2.0,
            "min_efficiency": 0.8,
        },
    )
    by = {g.name: g for g in gates}
    assert [g.name for g in gates] == [
        "min_speedup",
        "max_parity_diff",
        "max_export_diff",
        "min_fidelity_cosine",
        "min_flops_ratio",
        "min_efficiency",
    ]
    # min_speedup reads the upper end of the paired interval (1.43× [1.38, 1.42] here)
    assert not by["min_speedup"].passed and by["min_speedup"].value == 1.42
    assert by["max_parity_diff"].passed and by["max_parity_diff"].kind == "max"
    assert not by["max_export_diff"].passed
    assert not by["min_fidelity_cosine"].passed
    assert by["min_flops_ratio"].passed
    assert by["min_efficiency"].passed  # equal to the limit passes
    assert format_gate(by["min_speedup"]) == (
        "FAIL min_speedup: 1.42 < 1.80 (upper end of the paired 95% interval 1.43× [1.38, 1.42])")
    assert format_gate(by["max_parity_diff"]) == "ok   max_parity_diff: 3.1e-06 <= 1e-04"
    assert format_gate(by["min_fidelity_cosine"]) == "FAIL min_fidelity_cosine: 0.9987 < 0.9990"
    assert format_gate(by["max_export_diff"]) == "FAIL max_export_diff: 2e-03 > 1e-03"


def test_not_measured() -> None:
    (top1,) = evaluate_gates(REPORT, {"min_top1_agreement": 0.9})
    assert top1.value is None and not top1.passed
    assert "not measured" in top1.note
    assert "not measured" in format_gate(top1) and format_gate(top1).startswith("FAIL")
    (sp,) = evaluate_gates(sample_report(throughput=None), {"min_speedup": 1.0})
    assert not sp.passed and "not measured" in sp.note


def test_nan_fails() -> None:
    (g,) = evaluate_gates(_set(sample_report(), ("parity", "engine", "max_abs_diff"), math.nan),
                          {"max_parity_diff": 1.0})
    assert not g.passed


def test_unknown_gate() -> None:
    with pytest.raises(ValueError) as exc:
        evaluate_gates(REPORT, {"min_speedup": 1.0, "max_latency": 3.0})
    msg = str(exc.value)
    assert "max_latency" in msg
    assert all(name in msg for name in GATES)


def test_gate_to_dict() -> None:
    g = Gate("min_speedup", 2.0, 1.5, True, "min")
    assert g.to_dict() == {
        "name": "min_speedup",
        "value": 2.0,
        "limit": 1.5,
        "passed": True,
        "kind": "min",
        "note": "",
    }


def test_accuracy_and_dense_gates() -> None:
    report = sample_report()
    for path, v in [(("accuracy", "drop_points"), 1.5),
                    (("accuracy", "embedding_cosine_mean"), 0.9991),
                    (("dense", "pearson_mean"), 0.93), (("dense", "iou_mean"), 0.71)]:
        _set(report, path, v)
    gates = evaluate_gates(
        report,
        {
            "max_accuracy_drop": 1.0,
            "min_embedding_cosine": 0.999,
            "min_dense_pearson": 0.95,
            "min_dense_iou": 0.7,
        },
    )
    by = {g.name: g for g in gates}
    assert not by["max_accuracy_drop"].passed and by["max_accuracy_drop"].kind == "max"
    assert by["min_embedding_cosine"].passed
    assert not by["min_dense_pearson"].passed and by["min_dense_iou"].passed
    assert format_gate(by["max_accuracy_drop"]) == "FAIL max_accuracy_drop: 1.50 > 1.00"
    assert format_gate(by["min_dense_iou"]) == "ok   min_dense_iou: 0.71 >= 0.70"
    # a negative drop (compressed better) passes; a null section is "not measured"
    (neg,) = evaluate_gates(_set(sample_report(), ("accuracy", "drop_points"), -0.5),
                            {"max_accuracy_drop": 0.0})
    assert neg.passed
    for name in ("max_accuracy_drop", "min_embedding_cosine", "min_dense_pearson",
                 "min_dense_iou"):
        (g,) = evaluate_gates(sample_report(accuracy=None, dense=None), {name: 0.5})
        assert not g.passed and "not measured" in g.note
    assert GATES["min_dense_iou"] == (("dense", "iou_mean"), "min")


def test_every_gate_reads_a_number_of_the_report_type() -> None:
    """The gate table and the typed report cannot drift: each path ends at a float field."""
    import typing

    from vtc import report as rep

    for name, (path, _kind) in GATES.items():
        cls: object = Report
        for key in path:
            hints = typing.get_type_hints(cls)
            assert key in hints, f"{name}: {key} is not a field of {cls}"
            arg = hints[key]
            inner = [a for a in typing.get_args(arg) if a is not type(None)] or [arg]
            cls = inner[0]
        assert cls is float, f"{name}: {'.'.join(path)} is {cls}, not a float"
        assert isinstance(lookup(sample_report(), path), float)
    assert Stats is rep.Stats


def _interval(report: Report, est: float, low: float, high: float) -> Report:
    assert report.throughput is not None
    ci = report.throughput.speedup_ci
    ci.estimate, ci.low, ci.high = est, low, high
    report.throughput.speedup = est
    return report


@pytest.mark.parametrize(("est", "low", "high", "passed"), [
    (0.85, 0.81, 0.89, False),  # the tome-r8 on a ViT: slower beyond noise
    (0.97, 0.92, 1.03, True),   # a slowdown within ±5 % noise does not flap the gate
    (1.02, 0.95, 1.08, True),
    (1.49, 1.42, 1.57, True),
])
def test_min_speedup_fails_only_when_the_whole_interval_is_below(
        est: float, low: float, high: float, passed: bool) -> None:
    (g,) = evaluate_gates(_interval(sample_report(), est, low, high), {"min_speedup": 1.0})
    assert g.passed is passed and g.value == high
    assert f"{est:.2f}× [{low:.2f}, {high:.2f}]" in g.note


def test_applicable_skips_what_a_run_cannot_judge_with_the_reason() -> None:
    gates = {"min_speedup": 1.0, "min_efficiency": 0.5, "min_top1_agreement": 0.75,
             "min_sample_cosine": 0.97, "min_token_cosine": 0.85, "max_parity_diff": 1e-4}
    report = sample_report(dense=None)  # a classifier: logits, timed over 20 rounds
    judged, why = applicable(report, gates, bench=True)
    assert list(judged) == ["min_speedup", "min_efficiency", "min_top1_agreement",
                            "max_parity_diff"]
    assert why == {"min_sample_cosine": "the floor of embeddings outputs; this output is logits",
                   "min_token_cosine": "the floor of tokens outputs; this output is logits"}
    _, why = applicable(report, gates, bench=False)
    assert why["min_speedup"] == why["min_efficiency"] == "not timed (--no-bench)"


def test_speed_gates_need_ten_rounds() -> None:
    """The test suite's quick runs time 2 rounds: the speed gates are set aside, named,
    and judged again from 10 rounds (what the issue asks of a gate tests must not flap)."""
    from tests.reports import timing

    report = sample_report()
    assert report.throughput is not None
    for n, skipped in ((2, True), (9, True), (10, False)):
        report.throughput.compressed = timing(7.0, n=n)
        _, why = applicable(report, {"min_speedup": 1.0}, bench=True)
        assert ("min_speedup" in why) is skipped
        if skipped:
            assert why["min_speedup"] == (f"{n} timed rounds; a noise-aware verdict needs >= 10 "
                                          "(validate.repeats)")


@pytest.mark.parametrize(("basis", "top1", "kind"), [
    ("sample", 0.9, "logits"), ("sample", None, "embeddings"), ("token", None, "tokens"),
    ("pooled", None, "tokens")])
def test_each_fidelity_floor_is_judged_on_its_output_kind(basis: str, top1: float | None,
                                                          kind: str) -> None:
    report = sample_report(dense=None)
    report.fidelity.basis, report.fidelity.top1_agreement = basis, top1  # type: ignore[assignment]
    judged, why = applicable(report, dict.fromkeys(FIDELITY_SCOPE, 0.5), bench=True)
    assert [FIDELITY_SCOPE[g] for g in judged] == [kind]
    assert len(why) == 2 and all(w.endswith(f"this output is {kind}") for w in why.values())


def test_a_dense_output_is_judged_by_its_dense_gates_only() -> None:
    report = sample_report()  # has a dense tier
    report.fidelity.top1_agreement = None
    judged, why = applicable(report, {**dict.fromkeys(FIDELITY_SCOPE, 0.5),
                                      "min_dense_pearson": 0.9}, bench=True)
    assert list(judged) == ["min_dense_pearson"]
    assert all(w.endswith("this output is dense") for w in why.values()) and len(why) == 3


def test_speed_gates_advisory_sets_them_aside_and_a_bad_value_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """VTC_SPEED_GATES=advisory (shared CI runners): min_speedup/min_efficiency are set
    aside with that reason, every other gate is still judged; a typo is an input error."""
    from vtc.errors import InputError

    gates = {"min_speedup": 1.0, "min_efficiency": 0.5, "max_parity_diff": 1e-4}
    monkeypatch.setenv("VTC_SPEED_GATES", "advisory")
    judged, why = applicable(sample_report(dense=None), gates, bench=True)
    assert list(judged) == ["max_parity_diff"]
    assert why["min_speedup"].startswith("advisory (VTC_SPEED_GATES=advisory)")
    monkeypatch.setenv("VTC_SPEED_GATES", "enforce")
    assert list(applicable(sample_report(dense=None), gates, bench=True)[0]) == list(gates)
    monkeypatch.setenv("VTC_SPEED_GATES", "off")
    with pytest.raises(InputError, match="expected 'enforce'"):
        applicable(sample_report(dense=None), gates, bench=True)
