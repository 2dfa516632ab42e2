"""Pass/fail gates evaluated against a finished report (``report.json``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["min", "max"]

# gate name -> (path of keys into the report, kind)
GATES: dict[str, tuple[tuple[str, ...], Kind]] = {
    "min_speedup": (("throughput", "speedup"), "min"),
    "min_efficiency": (("throughput", "efficiency"), "min"),
    "max_parity_diff": (("parity", "engine", "max_abs_diff"), "max"),
    "max_export_diff": (("parity", "export", "max_abs_diff"), "max"),
    "min_fidelity_cosine": (("fidelity", "cosine_mean"), "min"),
    "min_top1_agreement": (("fidelity", "top1_agreement"), "min"),
    "min_flops_ratio": (("budget", "flops_ratio"), "min"),
    "max_accuracy_drop": (("accuracy", "drop_points"), "max"),
    "min_embedding_cosine": (("accuracy", "embedding_cosine_mean"), "min"),
    "min_dense_pearson": (("dense", "pearson_mean"), "min"),
    "min_dense_iou": (("dense", "iou_mean"), "min"),
}


@dataclass(frozen=True)
class Gate:
    """One gate: ``kind == "min"`` passes when ``value >= limit``, ``"max"`` when
    ``value <= limit``. ``value`` is None (and ``passed`` False) when not measured."""

    name: str
    value: float | None
    limit: float
    passed: bool
    kind: Kind
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lookup(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def evaluate_gates(report: dict[str, Any], gates: dict[str, float]) -> list[Gate]:
    """Evaluate ``gates`` (name -> limit) in order against ``report``.

    Raises ValueError for an unknown gate name. A value absent from the report
    (or not a number) gives a failed gate with note ``"not measured"``.
    """
    unknown = [g for g in gates if g not in GATES]
    if unknown:
        raise ValueError(f"unknown gate(s) {unknown}; known gates: {', '.join(GATES)}")
    result: list[Gate] = []
    for name, limit in gates.items():
        path, kind = GATES[name]
        raw = _lookup(report, path)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            note = f"not measured (report has no {'.'.join(path)})"
            result.append(Gate(name, None, float(limit), False, kind, note))
            continue
        value = float(raw)
        if math.isnan(value):
            result.append(Gate(name, value, float(limit), False, kind, "value is NaN"))
            continue
        passed = value >= limit if kind == "min" else value <= limit
        result.append(Gate(name, value, float(limit), passed, kind))
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
