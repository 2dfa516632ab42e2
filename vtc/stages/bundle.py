"""Stage 6, bundle: the verdict and the files that describe the bundle.

`judge` evaluates the recipe's gates against the typed report (skipping, and
listing, the gates a run cannot measure); `write_configs` puts config.json and
preprocessor_config.json (what optimum's ORTModel and HF's image processors load:
docs/optimum.md) into the bundle; `write` puts manifest.json,
preprocess.json (how a runtime turns an image into the model input), report.json
and report.md beside the graphs and the engine. The edge files (samples/, trt/) are
`vtc.stages.edge`'s; the manifest lists them with their sha256 under `edge`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import vtc
from vtc.backends import engines
from vtc.budget import Budget, Geometry
from vtc.recipe import RecipeBase
from vtc.report import BudgetInfo, LayerInfo, Preprocess, Report, to_jsonable
from vtc.source import Source
from vtc.stages.edge import edge_files
from vtc.stages.inputs import CONFIG, PREPROCESSOR
from vtc.util import sha256_file, write_atomic
from vtc.validate.gates import applicable, evaluate_gates, format_gate
from vtc.validate.payoff import payoff
from vtc.validate.report import write_report

__all__ = ["budget_info", "format_gate", "judge", "manifest", "model_config",
           "preprocessor_config", "write", "write_configs"]


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


def engine_endings(kind: str) -> tuple[str, ...]:
    """How the names of the files a built engine of `kind` is made of end (`Engine.files`:
    OpenVINO's `.ov.xml` and `.ov.bin`)."""
    engine = engines.get(kind)
    return tuple(f.name.removeprefix("x") for f in engine.files(Path("x" + engine.suffix)))


def manifest(report: Report, src: Source, tmp: Path, input_shape: list[int | str],
             opset: int | None, text: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the bundle is and where it came from, with every graph's and engine's sha256;
    `text`: an image–text model's text tower (`vtc.stages.text.manifest_entry`)."""
    built = engine_endings(report.engine.kind)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())
             if p.is_file() and (p.suffix in (".onnx", ".plan", ".data") or p.name.endswith(built)
                                 or p.name in (CONFIG, PREPROCESSOR, "preprocess.json"))}
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


def write_preprocess(tmp: Path, pre: Preprocess) -> None:
    """preprocess.json, written before the manifest so that its sha256 is listed there (the
    runtime checks it like the graphs)."""
    write_atomic(tmp / "preprocess.json",
                 json.dumps(preprocess_json(pre), indent=2, sort_keys=True) + "\n")


def write(tmp: Path, report: Report, manifest_data: dict[str, Any]) -> None:
    write_atomic(tmp / "manifest.json", json.dumps(manifest_data, indent=2, sort_keys=True) + "\n")
    write_report(tmp, report)


# ---- config.json and preprocessor_config.json: what optimum / transformers load ----

def _hf_size(h: int, w: int) -> int | list[int]:
    return h if h == w else [h, w]


def model_config(src: Source, pre: Preprocess, geometry: Geometry,
                 labels: dict[int, str] | None, output_shape: list[int]) -> dict[str, Any]:
    """The bundle's config.json: the source's own (an HF checkpoint's, or the one beside
    an ONNX file, e.g. optimum-cli's) with `image_size` / `num_channels` set to what the
    engines take; for an ONNX source without one, a ViT config of the graph's geometry
    (`patch_size` from its tokens and image size; `id2label` from the labels or the
    logits' width)."""
    folder = src.path if src.kind == "hf" else src.path.parent
    own = _read_json(folder / CONFIG)
    cfg = dict(own) if own is not None else _vit_config(geometry, pre, output_shape)
    hw = (pre.height, pre.width)
    if own is None or _size_of(own.get("image_size")) != hw:
        cfg["image_size"] = _hf_size(*hw)
    cfg["num_channels"] = pre.channels
    if labels is not None and "id2label" not in cfg:
        cfg["id2label"] = {str(k): v for k, v in labels.items()}
        cfg["label2id"] = {v: k for k, v in labels.items()}
    return cfg


def _vit_config(geometry: Geometry, pre: Preprocess, output_shape: list[int]
                ) -> dict[str, Any]:
    patches = max(geometry.tokens - geometry.protected, 1)
    patch = math.isqrt(pre.height * pre.width // patches) or 1
    cfg: dict[str, Any] = {
        "model_type": "vit", "hidden_size": geometry.width,
        "num_hidden_layers": geometry.layers, "num_attention_heads": geometry.heads,
        "intermediate_size": geometry.mlp_width, "patch_size": patch,
        "architectures": ["ViTModel"]}
    if len(output_shape) == 2 and output_shape[-1] > 0:
        n = output_shape[-1]
        cfg["architectures"] = ["ViTForImageClassification"]
        cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        cfg["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    return cfg


def _size_of(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, list) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))  # checked by the load stage
    return data if isinstance(data, dict) else None


def preprocessor_config(src: Source, pre: Preprocess) -> dict[str, Any]:
    """The bundle's preprocessor_config.json: the source's own (beside an ONNX file, or
    the checkpoint's) with `image_mean` / `image_std` and the size keys set to the
    resolved preprocessing (`Preprocess`), or one made from it: a BitImageProcessor
    (resize the shortest edge to round(side·256/224), center-crop H × W) for `crop`, a
    ViTImageProcessor (resize to H × W) otherwise. HF processors resample bilinearly
    where vtc's runtime uses bicubic, and have no `pad`: preprocess.json is exact."""
    folder = src.path if src.kind == "hf" else src.path.parent
    own = _read_json(folder / PREPROCESSOR)
    cfg: dict[str, Any] = dict(own) if own is not None else {
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "resample": 3, "rescale_factor": 1 / 255}
    crop = pre.resize == "crop"
    same = own is not None and (own.get("do_center_crop") is True) == crop and (
        _hint_size(own, crop) == (pre.height, pre.width))
    if not same:
        cfg.pop("crop_size", None)
        cfg["do_resize"] = True
        cfg["do_center_crop"] = crop
        if crop:
            cfg["image_processor_type"] = "BitImageProcessor"
            cfg["size"] = {"shortest_edge": round(min(pre.height, pre.width) * 256 / 224)}
            cfg["crop_size"] = {"height": pre.height, "width": pre.width}
        else:
            cfg["image_processor_type"] = "ViTImageProcessor"
            cfg["size"] = {"height": pre.height, "width": pre.width}
    cfg["do_normalize"] = True
    cfg["image_mean"], cfg["image_std"] = list(pre.mean), list(pre.std)
    return cfg


def _hint_size(cfg: dict[str, Any], crop: bool) -> tuple[int, int] | None:
    value = cfg.get("crop_size" if crop else "size")
    if isinstance(value, dict):
        h, w = value.get("height"), value.get("width")
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None
    return (value, value) if isinstance(value, int) else None


def write_configs(tmp: Path, src: Source, pre: Preprocess, geometry: Geometry,
                  labels: dict[int, str] | None, output_shape: list[int]) -> None:
    """config.json and preprocessor_config.json into the bundle (before `manifest`,
    which lists them): what optimum's ORTModel and HF's AutoImageProcessor load."""
    for name, data in ((CONFIG, model_config(src, pre, geometry, labels, output_shape)),
                       (PREPROCESSOR, preprocessor_config(src, pre))):
        write_atomic(tmp / name, json.dumps(data, indent=2, sort_keys=True) + "\n")
