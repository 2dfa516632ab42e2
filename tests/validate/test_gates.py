from __future__ import annotations

import math

import pytest

from tests.reports import sample_report
from vtc.report import Report, Stats, lookup
from vtc.validate.gates import GATES, Gate, evaluate_gates, format_gate


def _set(report: Report, path: tuple[str, ...], value: object) -> Report:
    setattr(lookup(report, path[:-1]), path[-1], value)
    return report


def _report() -> Report:
    r = sample_report()
    for path, v in [(("throughput", "speedup"), 1.42), (("throughput", "efficiency"), 0.8),
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
    assert not by["min_speedup"].passed and by["min_speedup"].value == 1.42
    assert by["max_parity_diff"].passed and by["max_parity_diff"].kind == "max"
    assert not by["max_export_diff"].passed
    assert not by["min_fidelity_cosine"].passed
    assert by["min_flops_ratio"].passed
    assert by["min_efficiency"].passed  # equal to the limit passes
    assert format_gate(by["min_speedup"]) == "FAIL min_speedup: 1.42 < 1.80"
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
