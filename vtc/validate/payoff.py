"""Did compression pay off in wall-clock time, and if not, which budget might?

The verdict reads the paired speedup's bootstrap interval (`vtc.stats`), as the
`min_speedup` gate does:

    whole interval above 1            → "pays"
    interval reaches 1                → "noise"   (no speedup beyond timing noise)
    whole interval below 1            → "slower"
    faster, but min_speedup failed    → "below_gate"

When it did not pay, the suggestion comes from the FLOPs model, not from a
measurement: the run's efficiency e = speedup / FLOPs ratio is assumed to hold at
a stronger budget, so reaching a target speedup S needs a FLOPs ratio of S / e.
The first setting of the recipe's budget knob (`r` of a merge, `keep_rate` of a
prune; the recipe's other settings kept) whose planned FLOPs ratio reaches that is
suggested. Efficiency usually falls at small token counts, so the suggestion is a
budget to try (`vtc sweep` measures several), never a promise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from vtc import stats
from vtc.budget import BudgetError, Geometry
from vtc.methods import plan_budget
from vtc.methods.base import Method, MethodConfig
from vtc.recipe import RecipeBase
from vtc.report import PayoffInfo, Report, speedup_text

__all__ = ["MARGIN", "payoff"]

MARGIN = 1.1  # the suggestion aims 10 % above the limit: beyond ±5-10 % timing noise
_KEEP_RATES = [round(1.0 - 0.05 * i, 2) for i in range(1, 20)]  # 0.95 … 0.05


def _trials(method: Method, cfg: MethodConfig, geo: Geometry
            ) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(setting, value, model_copy update) from the mildest to the strongest budget."""
    fields = type(cfg).model_fields
    if "r" in fields:
        for r in range(1, geo.tokens):
            yield "r", r, {"r": r, **({"flops_ratio": None} if "flops_ratio" in fields else {})}
    elif "keep_rate" in fields:
        for k in _KEEP_RATES:
            yield "keep_rate", k, {"keep_rate": k, **({"keep": None} if "keep" in fields
                                                      else {})}


def _suggest(recipe: RecipeBase, geo: Geometry, target_ratio: float
             ) -> tuple[str | None, float | None, str]:
    """(the --set of the first budget whose FLOPs ratio reaches `target_ratio`, its ratio,
    a note when none does)."""
    sections = [s for s in recipe.sections() if s[0].site == "encoder"]
    notes = []
    for i, (method, cfg) in enumerate(sections):
        best = None
        for key, value, update in _trials(method, cfg, geo):
            trial = list(sections)
            trial[i] = (method, cfg.model_copy(update=update))
            try:
                ratio = plan_budget(geo, trial).flops_ratio
            except BudgetError:
                break  # stronger settings are impossible too
            best = ratio if best is None else max(best, ratio)
            if ratio >= target_ratio:
                return f"--set {method.name}.{key}={value}", ratio, ""
        if best is not None:
            notes.append(f"{method.name} reaches at most FLOPs ratio {best:.2f} here")
    return None, None, "; ".join(notes)


def _verdict(report: Report) -> tuple[str, str]:
    th = report.throughput
    assert th is not None
    ci, sp = th.speedup_ci, speedup_text(th)
    gate = next((g for g in report.gates if g.name == "min_speedup"), None)
    how = f"paired, {ci.level:.0%} interval over {th.compressed.n} rounds"
    if ci.high < 1.0:
        return "slower", (f"compression does not pay off on this model: the compressed engine "
                          f"is slower than the uncompressed one ({sp}, {how})")
    if ci.low <= 1.0:
        return "noise", (f"compression does not pay off on this model: it is no faster than "
                         f"the uncompressed engine beyond timing noise ({sp}, {how})")
    if gate is not None and not gate.passed:
        return "below_gate", (f"compression is faster ({sp}, {how}) but not as fast as the "
                              f"min_speedup gate asks ({gate.limit:g}×)")
    return "pays", f"compression pays off on this model: {sp} faster ({how})"


def payoff(report: Report, recipe: RecipeBase, geo: Geometry | None) -> PayoffInfo | None:
    """The payoff of a judged report (gates filled in); None when the run was not timed,
    has fewer than `stats.MIN_ROUNDS` rounds, or reduces nothing (FLOPs ratio 1)."""
    th = report.throughput
    if th is None or th.compressed.n < stats.MIN_ROUNDS or report.budget.flops_ratio <= 1.0:
        return None
    verdict, message = _verdict(report)
    if verdict == "pays":
        return PayoffInfo("pays", message)
    gate = next((g for g in report.gates if g.name == "min_speedup"), None)
    target = max(1.0, gate.limit if gate is not None else 1.0) * MARGIN
    eff = th.speedup_ci.estimate / report.budget.flops_ratio
    need = target / eff
    basis = (f"the FLOPs model, not a measurement: the measured efficiency {eff:.2f} "
             f"(speedup per FLOPs ratio) assumed to hold, so {target:.2f}× needs a FLOPs ratio "
             f"of {need:.2f} (now {report.budget.flops_ratio:.2f}); measure it, e.g. with "
             "vtc sweep")
    info = PayoffInfo(verdict, message, target_speedup=round(target, 4),  # type: ignore[arg-type]
                      target_flops_ratio=round(need, 4), basis=basis)
    if geo is None:
        return info
    info.suggestion, ratio, note = _suggest(recipe, geo, need)
    info.suggestion_flops_ratio = None if ratio is None else round(ratio, 4)
    if info.suggestion is None:
        info.basis += "; no budget of this recipe's methods reaches it" + (
            f" ({note})" if note else "") + ": compression is unlikely to pay off on this model"
    return info
