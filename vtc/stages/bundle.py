"""Stage 6, bundle: the verdict and the files that describe the bundle.

`judge` evaluates the recipe's gates against the typed report (skipping, and
listing, the gates a run cannot measure); `write` puts manifest.json,
preprocess.json (how a runtime turns an image into the model input), report.json
and report.md beside the graphs and the engine. The edge files (samples/, trt/) are
`vtc.stages.edge`'s; the manifest lists them with their sha256 under `edge`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import vtc
from vtc.budget import Budget, Geometry
from vtc.recipe import RecipeBase
from vtc.report import BudgetInfo, LayerInfo, Preprocess, Report, to_jsonable
from vtc.source import Source
from vtc.stages.edge import edge_files
from vtc.util import sha256_file, write_atomic
from vtc.validate.gates import applicable, evaluate_gates, format_gate
from vtc.validate.payoff import payoff
from vtc.validate.report import write_report

__all__ = ["budget_info", "format_gate", "judge", "manifest", "write"]


def budget_info(budget: Budget) -> BudgetInfo:
    """The report's view of the budget."""
    d = budget.to_dict()
    d["layers"] = [LayerInfo(**lp) for lp in d["layers"]]
    return BudgetInfo(**d)


def judge(report: Report, recipe: RecipeBase, bench: bool, geo: Geometry | None = None
          ) -> None:
    """Fill `report.gates`, `gates_skipped` (+ why), `passed` and `payoff` from the
    recipe's gates (`vtc.validate.gates.applicable` sets aside what the run cannot judge);
    `geo`: the model's geometry, for the payoff's budget suggestion."""
    gates, why = applicable(report, dict(recipe.gates), bench)
    report.gates = evaluate_gates(report, gates)
    report.gates_skipped, report.gates_skipped_why = list(why), why
    report.passed = all(g.passed for g in report.gates)
    report.payoff = payoff(report, recipe, geo)


def manifest(report: Report, src: Source, tmp: Path, input_shape: list[int | str],
             opset: int | None, text: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the bundle is and where it came from, with every graph's and engine's sha256;
    `text`: an image–text model's text tower (`vtc.stages.text.manifest_entry`)."""
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())
             if p.is_file() and (p.suffix in (".onnx", ".plan", ".data"))}
    return {
        "vtc_version": vtc.__version__,
        "report_schema_version": report.schema_version,
        "source": {"spec": src.spec, "kind": src.kind, "sha256": src.digest()},
        "recipe": report.recipe,
        "budget": to_jsonable(report.budget),
        "shapes": {"input": input_shape, "dynamic_batch": not isinstance(input_shape[0], int),
                   "timed_batch": report.throughput.batch if report.throughput else None,
                   "tokens_in": report.budget.tokens_in, "tokens_out": report.budget.tokens_out},
        "opset": opset,
        "input": to_jsonable(report.inputs.preprocess),
        "engine": {"kind": report.engine.kind, "providers": report.engine.providers,
                   "file": report.engine.file, "precision": report.engine.precision},
        "machine": to_jsonable(report.machine),
        "files": files,
        "edge": edge_files(tmp),  # samples/ and trt/ (vtc.stages.edge)
        **({"text": text} if text is not None else {}),
    }


def preprocess_json(pre: Preprocess) -> dict[str, Any]:
    """preprocess.json: the image input and the steps that make it, for a runtime."""
    data = to_jsonable(pre)
    data["steps"] = [
        f"decode; convert to {'gray (PIL L: ITU-R 601-2 luma)' if pre.channels == 1 else 'RGB'}"
        " (16-bit gray scaled to 8 bits)",
        {"crop": "resize (bicubic) to cover round(height*256/224) x round(width*256/224), "
                 "then center-crop height x width",
         "pad": "resize (bicubic) to fit inside height x width keeping the aspect ratio, "
                "centred on black (0)",
         "stretch": "resize (bicubic) to height x width"}[pre.resize],
        "pixels / 255, then (x - mean) / std per channel; layout [batch, channels, height, "
        "width] float32",
    ]
    return data  # type: ignore[no-any-return]


def write(tmp: Path, report: Report, manifest_data: dict[str, Any],
          pre: Preprocess | None = None) -> None:
    write_atomic(tmp / "manifest.json", json.dumps(manifest_data, indent=2, sort_keys=True) + "\n")
    if pre is not None:
        write_atomic(tmp / "preprocess.json",
                     json.dumps(preprocess_json(pre), indent=2, sort_keys=True) + "\n")
    write_report(tmp, report)
