"""Compare a bundle's report with a stored baseline, metric by metric.

    baseline report.json ─┐
                          ├─ incomparable? → InputError (exit 2), reasons named
    this report.json ─────┘
        │
        ├─ budget   tokens out, tokens per layer, FLOPs ratio   exact
        ├─ parity   engine / export max |diff|                 ≤ the recipe's gate
        ├─ quality  fidelity, probe accuracy, dense scores      drop ≤ tolerance
        ├─ speed    speedup; compressed img/s (same machine)    bootstrap interval
        ├─ fusions  fused ops the baseline had                  none lost
        └─ gates    this bundle's own recipe gates              as judged

Two vision-language reports get `vtc.check.vlm`'s rows instead (cuts, generation
parity, fidelity, prefill speedup) and the same gate rows.
                                                               ▼
                                                 Comparison (rows; passed)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from vtc.backends.machine import differences
from vtc.check.read import CheckInputError, Side, incomparable
from vtc.check.rows import Row, budget_rows, fusion_rows, gate_rows, parity_rows, quality_rows
from vtc.check.speed import speed_rows
from vtc.check.vlm import vlm_incomparable, vlm_rows
from vtc.recipe import CheckCfg
from vtc.report import Report, to_jsonable
from vtc.report_vlm import VlmReport

__all__ = ["Comparison", "compare", "tolerances"]


@dataclass
class Comparison:
    baseline: str
    now: str
    tolerances: dict[str, float]
    machine_differences: list[str]
    rows: list[Row] = field(default_factory=list)
    incomparable: list[str] = field(default_factory=list)  # why this pair is no check

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "FAIL"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"baseline": self.baseline, "now": self.now, "passed": self.passed,
                            "tolerances": self.tolerances,
                            "machine_differences": self.machine_differences,
                            "rows": [asdict(r) for r in self.rows]})


def tolerances(now_recipe: dict[str, Any], overrides: dict[str, float]) -> CheckCfg:
    """The bundle recipe's `check:` section, with `overrides` (from flags) on top."""
    from pydantic import ValidationError

    merged = {**(now_recipe.get("check") or {}), **overrides}
    try:
        return CheckCfg(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise CheckInputError(f"check tolerance {key}={merged.get(key)!r}: {err['msg']}; "
                              "see `vtc check --help` for the ranges") from None


def _encoder_rows(b: Report, n: Report, tol: CheckCfg) -> list[Row]:
    return [*budget_rows(b, n), *parity_rows(b, n, tol), *quality_rows(b, n, tol),
            *speed_rows(b, n, tol), *fusion_rows(b, n)]


# per report kind (is it a VLM report?): why a pair is incomparable, and its rows
_KINDS: dict[bool, tuple[Callable[[Any, Any], list[str]],
                         Callable[[Any, Any, CheckCfg], list[Row]]]] = {
    False: (incomparable, _encoder_rows), True: (vlm_incomparable, vlm_rows)}


def compare(base: Side, now: Side, overrides: dict[str, float] | None = None,
            strict: bool = True) -> Comparison:
    """Every row for `now` against `base` (module docstring; two vision-language reports:
    `vtc.check.vlm`). `strict` (`vtc check`): an incomparable pair is an input error;
    otherwise (`vtc report diff`) the rows are built anyway and `Comparison.incomparable`
    says why they are no check. An encoder report and a VLM one are never a pair."""
    b, n = base.report, now.report
    if isinstance(b, VlmReport) != isinstance(n, VlmReport):
        which = (now if isinstance(n, VlmReport) else base).label
        raise CheckInputError(f"cannot compare {now.label} with baseline {base.label}: "
                              f"{which} is a vision-language bundle and the other an encoder "
                              "bundle; compare two bundles of the same kind")
    reasons_of, rows_of = _KINDS[isinstance(b, VlmReport)]
    reasons = reasons_of(b, n)
    if reasons and strict:
        raise CheckInputError(f"cannot compare {now.label} with baseline {base.label}: "
                              + "; ".join(reasons) + " — build the baseline from the same "
                              "model, batch, precision and engine")
    tol = tolerances(n.recipe, overrides or {})
    rows = [*rows_of(b, n, tol), *gate_rows(n)]
    return Comparison(base.label, now.label, tol.model_dump(),
                      differences(b.machine, n.machine), rows, reasons)
