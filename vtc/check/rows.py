"""One row of a comparison, and the rows that need no statistics.

Every row is `metric | baseline | now | change | verdict | note`; `values` keeps
the raw numbers for `--json`. Verdicts: `pass`, `FAIL`, `skip` (could not be
compared here; the note says why) and `info` (shown, never judged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vtc.recipe import CheckCfg
from vtc.report import Report, lookup
from vtc.report_vlm import VlmReport

Verdict = Literal["pass", "FAIL", "skip", "info"]

__all__ = ["Row", "Verdict", "budget_rows", "fusion_rows", "gate_rows", "parity_rows",
           "quality_rows"]


@dataclass
class Row:
    metric: str
    baseline: str
    now: str
    change: str
    verdict: Verdict
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _exact(metric: str, a: Any, b: Any, show: Any = None) -> Row:
    same = a == b
    return Row(metric, _fmt(show(a) if show else a), _fmt(show(b) if show else b),
               "=" if same else "changed", "pass" if same else "FAIL",
               "" if same else "must stay exactly as in the baseline (rebuild the baseline "
               "if the budget change is intended)", {"baseline": a, "now": b})


def budget_rows(base: Report, now: Report) -> list[Row]:
    """Tokens and FLOPs: a static budget is reproduced exactly or it changed."""
    b, n = base.budget, now.budget

    def per_layer(x: list[int]) -> str:  # the whole list is in --json (values)
        if len(x) <= 4:
            return "→".join(str(t) for t in x)
        return f"{x[0]}→…→{x[-1]} ({len(x)} blocks)"

    layers = _exact("budget.tokens_per_layer", b.tokens_per_layer, n.tokens_per_layer,
                    per_layer)
    diff = [i for i, (u, v) in enumerate(zip(b.tokens_per_layer, n.tokens_per_layer,
                                             strict=False)) if u != v]
    if diff:
        layers.change = f"changed from block {diff[0]}"
    return [_exact("budget.tokens_out", b.tokens_out, n.tokens_out), layers,
            _exact("budget.flops_ratio", b.flops_ratio, n.flops_ratio)]


def _limit_row(metric: str, base: float | None, now: float | None, limit: float,
               why: str) -> Row:
    if now is None:
        return Row(metric, _fmt(base), "—", "", "skip", "not measured in this bundle")
    ok = now <= limit
    return Row(metric, _fmt(base), _fmt(now), f"limit {limit:.0e}", "pass" if ok else "FAIL",
               "" if ok else f"above {why} {limit:.0e}",
               {"baseline": base, "now": now, "limit": limit})


def parity_rows(base: Report, now: Report, tol: CheckCfg) -> list[Row]:
    """Parity is judged against its limit, not the baseline's value (noise at 1e-7)."""
    gates = now.recipe.get("gates", {}) or {}
    rows = []
    for tier, gate in (("engine", "max_parity_diff"), ("export", "max_export_diff")):
        limit = gates.get(gate)
        why = f"the recipe's {gate} gate" if limit is not None else "check.max_parity_diff"
        b, n = getattr(base.parity, tier), getattr(now.parity, tier)
        rows.append(_limit_row(f"parity.{tier}.max_abs_diff", b.max_abs_diff if b else None,
                               n.max_abs_diff if n else None,
                               float(limit if limit is not None else tol.max_parity_diff), why))
    return rows


# metric path → (tolerance field, unit shown in the change column)
_QUALITY: dict[str, tuple[str, str]] = {
    "fidelity.cosine_mean": ("max_cosine_drop", ""),
    "fidelity.top1_agreement": ("max_agreement_drop", ""),
    "fidelity.top5_agreement": ("max_agreement_drop", ""),
    "accuracy.compressed_acc": ("max_accuracy_drop", " pt"),
    "accuracy.embedding_cosine_mean": ("max_cosine_drop", ""),
    "dense.pearson_mean": ("max_dense_drop", ""),
    "dense.iou_mean": ("max_dense_drop", ""),
}


def _probe_mismatch(base: Report, now: Report) -> str:
    a, b = base.accuracy, now.accuracy
    if a is None or b is None:
        return ""
    fa = (a.dataset.name, a.n_train, a.n_test)
    fb = (b.dataset.name, b.n_train, b.n_test)
    return "" if fa == fb else f"another probe (baseline {fa}, now {fb})"


def quality_rows(base: Report, now: Report, tol: CheckCfg) -> list[Row]:
    """Fidelity, probe accuracy and dense scores: a drop beyond the tolerance fails."""
    rows = []
    mismatch = _probe_mismatch(base, now)
    for metric, (tol_name, unit) in _QUALITY.items():
        path = tuple(metric.split("."))
        a, b = lookup(base, path), lookup(now, path)
        if a is None and b is None:
            continue  # a tier neither run has (e.g. dense on a classifier)
        if a is None or b is None:
            where = "the baseline" if a is None else "this bundle"
            rows.append(Row(metric, _fmt(a), _fmt(b), "", "skip", f"not measured in {where}"))
            continue
        if mismatch and metric.startswith("accuracy."):
            rows.append(Row(metric, _fmt(a), _fmt(b), "", "skip", mismatch))
            continue
        rows.append(drop_row(metric, float(a), float(b), float(getattr(tol, tol_name)),
                             tol_name, unit))
    return rows


def drop_row(metric: str, a: float, b: float, allowed: float, tol_name: str, unit: str = "",
             why: str = "") -> Row:
    """A higher-is-better figure: FAIL when it fell from `a` to `b` by more than `allowed`,
    the tolerance `check.<tol_name>` (`why`, when given, explains a failure instead)."""
    drop = a - b
    ok = drop <= allowed + 1e-12
    note = "" if ok else why or f"dropped by more than check.{tol_name} = {allowed:g}"
    return Row(metric, _fmt(a), _fmt(b), "=" if drop == 0 else f"{-drop:+.4g}{unit}",
               "pass" if ok else "FAIL", note, {"baseline": a, "now": b, "allowed_drop": allowed})


def fusion_rows(base: Report, now: Report) -> list[Row]:
    """A fusion the baseline's compressed engine had and this one lost fails."""
    if base.fusions is None or now.fusions is None:
        return []
    b, n = base.fusions.compressed, now.fusions.compressed
    lost = {op: b[op] - n.get(op, 0) for op in sorted(b) if n.get(op, 0) < b[op]}
    def show(d: dict[str, int]) -> str:  # the op list is in --json (values)
        return f"{sum(d.values())} ops, {len(d)} kinds" if d else "none"

    return [Row("fusions.compressed", show(b), show(n),
                "lost " + ", ".join(f"{k} x{v}" for k, v in lost.items()) if lost else "=",
                "FAIL" if lost else "pass",
                "fused ops the baseline engine had are gone" if lost else "",
                {"baseline": b, "now": n, "lost": lost})]


def gate_rows(now: Report | VlmReport) -> list[Row]:
    """This bundle's own recipe gates, as it judged them."""
    return [Row(f"gate.{g.name}", "", _fmt(g.value), f"{g.kind} {g.limit:g}",
                "pass" if g.passed else "FAIL", g.note, {"value": g.value, "limit": g.limit})
            for g in now.gates]
