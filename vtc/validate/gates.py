"""Pass/fail gates evaluated against a finished report (the gate table, `GATES`,
lives with the report type in `vtc.report`)."""

from __future__ import annotations

import math

from vtc.report import GATES, Gate, Kind, Report, lookup, task_gate

__all__ = ["GATES", "Gate", "evaluate_gates", "format_gate", "judge_value"]


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
        result.append(judge_value(name, raw, limit, kind, path))
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
    return f"{status} {g.name}: {val} {op} {lim}"
