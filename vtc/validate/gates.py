"""Pass/fail gates evaluated against a finished report (the gate table, `GATES`,
lives with the report type in `vtc.report`).

`applicable` sets aside, with the reason, the gates a run cannot judge: tiers it did
not measure, fidelity floors of another output kind (`FIDELITY_SCOPE`), and speed
gates of a run timed over fewer than `stats.MIN_ROUNDS` rounds (a bootstrap over two
rounds says nothing about noise; the test suite's quick runs time two), and speed gates
under ``VTC_SPEED_GATES=advisory`` (`vtc.stats.speed_advisory`).

`min_speedup` reads the upper end of the paired speedup's interval: it fails only
when the whole interval lies below the limit, a slowdown beyond timing noise, so a
run whose true speedup is at the limit does not flap.
"""

from __future__ import annotations

import math

from vtc import stats
from vtc.report import (
    FIDELITY_SCOPE,
    GATES,
    ZERO_SHOT_GATES,
    Gate,
    Kind,
    Report,
    lookup,
    output_kind,
    speedup_text,
    task_gate,
)

__all__ = ["GATES", "Gate", "applicable", "evaluate_gates", "format_gate", "judge_value"]

SPEED_GATES = ("min_speedup", "min_efficiency")


def applicable(report: Report, gates: dict[str, float], bench: bool
               ) -> tuple[dict[str, float], dict[str, str]]:
    """(the gates this run can judge, in order; name → why each other one is skipped)."""
    why: dict[str, str] = {}
    rounds = report.throughput.compressed.n if report.throughput is not None else 0
    kind = output_kind(report.fidelity, report.dense is not None)
    advisory = stats.speed_advisory()
    for name in gates:
        if name in ("max_export_diff", "max_parity_diff") and report.parity.engine is None:
            why[name] = "an ONNX source has no eager model to compare with"
        elif name in SPEED_GATES and (not bench or report.throughput is None):
            why[name] = "not timed (--no-bench)"
        elif name in SPEED_GATES and advisory:
            why[name] = (f"advisory ({stats.SPEED_ENV}=advisory): measured and reported, "
                         "not gated")
        elif name in SPEED_GATES and rounds < stats.MIN_ROUNDS:
            why[name] = (f"{rounds} timed rounds; a noise-aware verdict needs >= "
                         f"{stats.MIN_ROUNDS} (validate.repeats)")
        elif name in ("min_dense_pearson", "min_dense_iou") and report.dense is None:
            why[name] = "not a dense output"
        elif name in ZERO_SHOT_GATES and report.zero_shot is None:
            why[name] = "no text tower (not a full CLIP checkpoint)"
        elif name in FIDELITY_SCOPE and FIDELITY_SCOPE[name] != kind:
            why[name] = f"the floor of {FIDELITY_SCOPE[name]} outputs; this output is {kind}"
    return {k: v for k, v in gates.items() if k not in why}, why


def judge_value(name: str, raw: object, limit: float, kind: Kind,
                path: tuple[str, ...]) -> Gate:
    """One gate from the value found at `path`: a value that is absent or not a number
    fails with note ``"not measured"``, NaN fails, else ``min``/``max`` against `limit`."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        note = f"not measured (report has no {'.'.join(path)})"
        return Gate(name, None, float(limit), False, kind, note)
    value = float(raw)
    if math.isnan(value):
        return Gate(name, value, float(limit), False, kind, "value is NaN")
    passed = value >= limit if kind == "min" else value <= limit
    return Gate(name, value, float(limit), passed, kind)


def evaluate_gates(report: Report, gates: dict[str, float]) -> list[Gate]:
    """Evaluate ``gates`` (name -> limit) in order against ``report``.

    Raises ValueError for an unknown gate name. A value absent from the report
    (or not a number) gives a failed gate with note ``"not measured"``.
    """
    unknown = [g for g in gates if g not in GATES and task_gate(g) is None]
    if unknown:
        raise ValueError(f"unknown gate(s) {unknown}; known gates: {', '.join(GATES)}")
    result: list[Gate] = []
    for name, limit in gates.items():
        tg = task_gate(name)
        if tg is not None:
            metric, kind = tg
            path: tuple[str, ...] = ("task", "metrics", metric)
            raw = report.task.metrics.get(metric) if report.task is not None else None
        else:
            path, kind = GATES[name]
            raw = lookup(report, path)
        gate = judge_value(name, raw, limit, kind, path)
        if name == "min_speedup" and report.throughput is not None and gate.value is not None:
            ci = report.throughput.speedup_ci
            gate = Gate(name, gate.value, gate.limit, gate.passed, kind,
                        f"upper end of the paired {ci.level:.0%} interval "
                        f"{speedup_text(report.throughput)}")
        result.append(gate)
    return result


def _sci(x: float) -> str:
    s = f"{x:.1e}"
    mant, _, exp = s.partition("e")
    mant = mant.removesuffix(".0")
    return f"{mant}e{exp}"


def _format_pair(value: float, limit: float) -> tuple[str, str]:
    """Format both numbers alike, with enough decimals to tell them apart."""
    if any(x != 0 and (abs(x) < 0.01 or abs(x) >= 1e5) for x in (value, limit)):
        return _sci(value), _sci(limit)
    a, b = f"{value:.2f}", f"{limit:.2f}"
    for digits in range(3, 7):
        if a != b or value == limit:
            break
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
    return a, b


def format_gate(g: Gate) -> str:
    """One line, e.g. ``"FAIL min_speedup: 1.42 < 1.80"`` or
    ``"ok   max_parity_diff: 3.1e-06 <= 1e-04"``."""
    status = "ok  " if g.passed else "FAIL"
    if g.value is None or math.isnan(g.value):
        _, lim = _format_pair(g.limit, g.limit)
        why = g.note or "not measured"
        return f"{status} {g.name}: {why} (limit {lim})"
    val, lim = _format_pair(g.value, g.limit)
    op = (">=" if g.passed else "<") if g.kind == "min" else "<=" if g.passed else ">"
    return f"{status} {g.name}: {val} {op} {lim}" + (f" ({g.note})" if g.note else "")
