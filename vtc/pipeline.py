"""The flow, as plain function calls:

    SOURCE ─► load ─► export ─► rewrite passes ─► compile ─► validate ─► bundle

`run(options)` builds the bundle in a temporary directory beside the output
and renames it into place only when everything (gates aside) succeeded, so an
interrupted or failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

import vtc
from vtc.budget import Budget, Geometry
from vtc.recipe import Recipe
from vtc.source import Source, SourceError, sha256_file


class OutputError(ValueError):
    """The output directory cannot be used (an input error)."""


@dataclass
class Options:
    source: str
    recipe: Recipe
    out: Path
    batch: int
    images: Path | None = None
    force: bool = False
    allow_pickle: bool = False
    protected: int | None = None  # ONNX sources: leading tokens never merged
    bench: bool = True
    batch_given: bool = False  # --batch was explicit (a static-batch ONNX must then agree)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))


@dataclass
class Result:
    out: Path
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


def check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"--out {out} exists and is not empty; pass --force to replace it")


def publish(tmp: Path, out: Path) -> None:
    """Move a finished temp dir into place (an old `out` is removed only now)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def onnx_geometry(model: ir.Model, protected: int | None) -> Geometry:
    """Budget geometry read off an ONNX graph (no eager model to ask)."""
    from vtc.passes.graph import find_blocks, mlp_width

    blocks = find_blocks(model)
    n = blocks[0].tokens
    if protected is None:
        if math.isqrt(n - 1) ** 2 == n - 1:
            protected = 1  # a square grid plus a CLS token
        elif math.isqrt(n) ** 2 == n:
            protected = 0  # a square grid, no CLS (SigLIP-like)
        else:
            raise SourceError(
                f"cannot tell how many of the {n} tokens are CLS/register tokens; "
                "pass --protected N"
            )
    return Geometry(tokens=n, protected=protected, width=blocks[0].width,
                    mlp_width=mlp_width(blocks[0]), layers=len(blocks))


def _check_images(folder: Path) -> None:
    """Fail before any heavy work when --images holds no image files."""
    from vtc.validate.images import IMAGE_EXTENSIONS

    if not folder.is_dir() or not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file()
    ):
        raise SourceError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                          "give a folder of images or leave --images out")


def _static_batch(path: Path) -> int | None:
    """The first input's batch when it is a fixed number, else None (symbolic)."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    first = dim.shape.dim[0] if len(dim.shape.dim) else None
    return int(first.dim_value) if first is not None and first.HasField("dim_value") else None


def _input_shape(model: ir.Model) -> list[int]:
    shape = model.graph.inputs[0].shape
    dims = [d for d in shape if isinstance(d, int)] if shape is not None else []
    if shape is None or len(dims) != len(shape) or len(dims) != 4:
        raise SourceError("the ONNX model's first input is not a static [B, 3, H, W] image")
    return dims


def run(opts: Options) -> Result:
    from vtc.source import resolve

    log = opts.log
    src = resolve(opts.source)
    check_out_dir(opts.out, opts.force)
    if opts.images is not None:
        _check_images(opts.images)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_name(f".{opts.out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        report = _build(opts, src, tmp, log)
        publish(tmp, opts.out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Result(opts.out, report)


def _build(opts: Options, src: Source, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from vtc import passes
    from vtc.backends.ort import OrtRunner, fused_op_counts, fusion_summary
    from vtc.passes.graph import static_dims
    from vtc.validate.gates import evaluate_gates, format_gate
    from vtc.validate.images import batches
    from vtc.validate.report import write_report
    from vtc.validate.tasks import is_dense, probe_report

    recipe, batch = opts.recipe, opts.batch
    dynamic = recipe.export.dynamic_batch
    t0 = time.perf_counter()
    step = _Steps(log, 8 if recipe.validate_.dataset else 7)
    baseline = tmp / "baseline.onnx"
    family = eager = model = None
    if src.kind == "hf":
        from vtc.exporter import get_family
        from vtc.exporter.export import export_onnx

        step(f"loading {src.spec} ({src.model_type})")
        family = get_family(src.model_type or "")
        eager = family.load(src.path, allow_pickle=opts.allow_pickle)
        size = recipe.export.image_size or family.image_size(eager)
        geo = family.geometry(eager, size)
        budget = recipe.budget(geo)
        step(f"exporting to ONNX (dynamo, opset {recipe.export.opset}, "
             f"batch {'dynamic' if dynamic else batch}, {size} px)")
        export_onnx(family, eager, batch, size, baseline, opset=recipe.export.opset,
                    dynamic_batch=dynamic)
        mean, std = family.mean(eager), family.std(eager)
    else:
        step(f"reading {src.path}")
        shutil.copyfile(src.path, baseline)
        fixed = _static_batch(baseline)
        if dynamic and fixed is not None:
            raise SourceError(f"{src.spec} has a static batch; export.dynamic_batch needs a "
                              "source exported with a dynamic batch axis")
        if fixed is not None and fixed != batch:
            if opts.batch_given:
                raise SourceError(f"{src.spec} has a static batch of {fixed}, not --batch "
                                  f"{batch}; pass --batch {fixed} or re-export it")
            log(f"      {src.spec} has a static batch of {fixed}: building and timing at it")
            batch = fixed
        model = passes.load(baseline, batch, recipe.export.image_size)
        geo = onnx_geometry(model, opts.protected)
        budget = recipe.budget(geo)
        size = _input_shape(model)[-1]
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, for --images
        if not dynamic:
            # The baseline engine runs the same pinned, folded graph the passes start from.
            ir.save(model, baseline)

    step(f"rewriting: {budget.method}, tokens {budget.tokens_in} → {budget.tokens_out}, "
         f"FLOPs ratio {budget.flops_ratio:.2f}")
    if model is None or dynamic:
        model = passes.load(baseline, passes.PROBES[0] if dynamic else batch, size)
    presult = passes.compress(model, budget, recipe.tome.unmerge)
    if dynamic:  # a twin at another batch shows which constants baked it
        twin = passes.load(baseline, passes.PROBES[1], size)
        passes.compress(twin, budget, recipe.tome.unmerge)
        presult.batch_constants = passes.make_batch_dynamic(model, twin)
        passes.check(model)
    compressed = tmp / "model.onnx"
    dense = is_dense(static_dims(model.graph.outputs[0]) or [])
    if recipe.validate_.dataset and dense:
        raise SourceError(f"validate.dataset={recipe.validate_.dataset}: a linear probe needs "
                          "an embedding or logits output, not a dense map; drop the dataset")
    ir.save(model, compressed)

    step("compiling ONNX Runtime engines (ORT_ENABLE_ALL)")
    providers = recipe.backend.providers
    engine = tmp / "model.ort.onnx"
    base_opt = tmp / "baseline.ort.onnx"
    base_rt = OrtRunner(baseline, providers=providers, optimized_model_path=base_opt,
                        intra_op_threads=recipe.backend.threads)
    comp_rt = OrtRunner(compressed, providers=providers, optimized_model_path=engine,
                        intra_op_threads=recipe.backend.threads)
    with base_rt, comp_rt:
        fusions = fusion_summary(fused_op_counts(base_opt), fused_op_counts(engine))
        base_opt.unlink()
        step("validating: parity, fidelity")
        inputs = _inputs(opts, recipe, size, mean, std, batch, dense)
        report_val = _validate(family, eager, budget, base_rt, comp_rt, inputs, batch, dense)
        v = recipe.validate_
        report_val["throughput"] = None
        if opts.bench:  # timed before the long probe run, in a quiet process
            step(f"timing (batch {batch}, interleaved, median of {v.repeats})")
            first = next(batches(inputs["x"], batch))[0]
            report_val["throughput"] = _throughput(recipe, family, eager, base_rt, comp_rt,
                                                   first, batch, budget)
        report_val["accuracy"] = None
        if v.dataset:
            step(f"linear probe on {v.dataset}")
            report_val["accuracy"] = probe_report(v.dataset, v.probe_train, v.probe_test,
                                                  v.seed, base_rt, comp_rt, size, mean, std,
                                                  batch, log)
        providers_used = comp_rt.providers

    report: dict[str, Any] = {
        "vtc_version": vtc.__version__,
        "source": {"spec": src.spec, "kind": src.kind, "model_type": src.model_type,
                   "family": family.name if family else None},
        "recipe": recipe.to_dict(),
        "budget": budget.to_dict(),
        "graph": presult.to_dict(),
        "fusions": fusions,
        "inputs": inputs["meta"],
        "providers": providers_used,
        **report_val,
    }
    gates = dict(recipe.gates)
    skipped: list[str] = []
    def _skip(*names: str) -> list[str]:
        return [g for g in names if gates.pop(g, None) is not None]

    if src.kind == "onnx":  # no eager model: the parity tiers cannot be measured
        skipped += _skip("max_export_diff", "max_parity_diff")
    if not opts.bench:
        skipped += _skip("min_speedup", "min_efficiency")
    if report.get("dense") is None:  # not a dense output: its gates do not apply
        skipped += _skip("min_dense_pearson", "min_dense_iou")
    results = evaluate_gates(report, gates)
    report["gates"] = [g.to_dict() for g in results]
    report["gates_skipped"] = skipped
    report["passed"] = all(g.passed for g in results)
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    for g in results:
        log(format_gate(g))

    manifest = {
        "vtc_version": vtc.__version__,
        "source": {"spec": src.spec, "kind": src.kind, "sha256": src.digest()},
        "recipe": recipe.to_dict(),
        "budget": budget.to_dict(),
        "shapes": {"input": ["batch" if dynamic else batch, 3, size, size],
                   "dynamic_batch": dynamic, "timed_batch": batch,
                   "tokens_in": budget.tokens_in,
                   "tokens_out": budget.tokens_out},
        "opset": recipe.export.opset if src.kind == "hf" else None,
        "providers": providers_used,
        "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.suffix == ".onnx"},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    write_report(tmp, report)
    step(f"bundle complete in {report['elapsed_s']:.1f} s")
    return report


class _Steps:
    def __init__(self, log: Callable[[str], None], total: int) -> None:
        self.log, self.total, self.n, self.t = log, total, 0, time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.n += 1
        self.log(f"[{min(self.n, self.total)}/{self.total}] {msg} "
                 f"(+{time.perf_counter() - self.t:.1f}s)")


def _inputs(opts: Options, recipe: Recipe, size: int, mean: Any, std: Any, batch: int,
            dense: bool) -> dict[str, Any]:
    from vtc.data import photo_batch
    from vtc.data.skimage_sets import PHOTOS
    from vtc.validate.images import load_images, synthetic_batch

    n = max(batch, math.ceil(recipe.validate_.samples / batch) * batch)
    if opts.images is not None:
        try:
            x = load_images(opts.images, size, mean, std, limit=None)
        except ValueError as exc:
            raise SourceError(f"--images: {exc}") from exc
        meta = {"kind": "images", "folder": str(opts.images), "count": len(x),
                "note": "the last batch is padded with repeats; only real images are scored"}
    elif dense or recipe.validate_.dataset:
        x = photo_batch(size, mean, std)
        meta = {"kind": "photos", "names": list(PHOTOS), "count": len(x),
                "note": "scikit-image's test photos, resized to the model input"}
    else:
        x = synthetic_batch(n, size, seed=recipe.validate_.seed)
        meta = {"kind": "synthetic", "seed": recipe.validate_.seed, "count": int(n),
                "note": "fixed-seed standard normal pixels: fidelity on real images may differ"}
    return {"x": x.astype(np.float32), "meta": meta}


def _validate(family: Any, eager: Any, budget: Budget, base_rt: Any, comp_rt: Any,
              inputs: dict[str, Any], batch: int, dense: bool) -> dict[str, Any]:
    import torch

    from vtc.exporter.eager import run_reference
    from vtc.validate.fidelity import fidelity
    from vtc.validate.images import batches
    from vtc.validate.parity import compare
    from vtc.validate.tasks import dense_report, run_engine

    name = comp_rt.output_names[0]
    b, c = run_engine(base_rt, inputs["x"], batch), run_engine(comp_rt, inputs["x"], batch)
    out: dict[str, Any] = {"output": name}
    if eager is not None:
        ref_b, ref_c = [], []
        for xb, real in batches(inputs["x"], batch):  # same batches as the engines saw
            with torch.no_grad():
                t = torch.from_numpy(xb)
                ref_b.append(family.wrap_for_export(eager)(t)[0].numpy()[:real])
                ref_c.append(run_reference(family, eager, t, budget)[name].numpy()[:real])
        out["parity"] = {
            "export": compare(np.concatenate(ref_b), b).to_dict(),
            "engine": compare(np.concatenate(ref_c), c).to_dict(),
        }
    else:
        out["parity"] = {"export": None, "engine": None,
                         "note": "ONNX source: no eager model, parity tiers not measurable"}
    classifier = family.is_classifier(eager) if family is not None else "logit" in name.lower()
    out["fidelity"] = fidelity(b, c, classifier)
    out["dense"] = dense_report(b, c, name) if dense else None
    return out


def _throughput(recipe: Recipe, family: Any, eager: Any, base_rt: Any, comp_rt: Any,
                xb: np.ndarray, batch: int, budget: Budget) -> dict[str, Any]:
    from vtc.validate.bench import measure_interleaved, speedup

    feeds_b = {base_rt.input_names[0]: xb}
    feeds_c = {comp_rt.input_names[0]: xb}
    runners: dict[str, Callable[[], object]] = {
        "baseline": lambda: base_rt.infer(feeds_b),
        "compressed": lambda: comp_rt.infer(feeds_c),
    }
    if eager is not None and recipe.validate_.eager_throughput:
        import torch

        wrapped = family.wrap_for_export(eager)
        t = torch.from_numpy(xb)

        def _eager() -> object:
            with torch.inference_mode():
                return wrapped(t)

        def _eager_compressed() -> object:
            from vtc.exporter.eager import run_reference

            return run_reference(family, eager, t, budget)

        runners["eager"] = _eager
        if budget.reducing_layers:
            runners["eager_compressed"] = _eager_compressed
    v = recipe.validate_
    timings = measure_interleaved(runners, batch=batch, warmup=v.warmup, repeats=v.repeats,
                                  min_time_s=v.min_time_s)
    sp = speedup(timings["baseline"], timings["compressed"])
    return {
        "batch": batch,
        "baseline_ips": timings["baseline"].img_per_s,
        "compressed_ips": timings["compressed"].img_per_s,
        "eager_ips": timings["eager"].img_per_s if "eager" in timings else None,
        "eager_compressed_ips": (timings["eager_compressed"].img_per_s
                                 if "eager_compressed" in timings else None),
        "speedup": sp,
        "efficiency": sp / budget.flops_ratio,
        **{name: t.to_dict() for name, t in timings.items()},
        "method": "interleaved round-robin after warm-up, median latency per batch",
    }
