"""The flow, as a sequence of stage calls (each a function with typed inputs and outputs
in `vtc.stages`)::

    SOURCE ─► load ─► export ─► compress ─► compile ─► validate ─► bundle

`run(options)` builds the bundle in a temporary directory beside the output and
renames it into place only when everything (gates aside) succeeded, so an
interrupted or failed run leaves nothing half-written behind. `vtc-export`,
`vtc sweep` and `vtc demo` all come through here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

import vtc
from vtc.backends import engines
from vtc.backends.machine import machine_info
from vtc.budget import Budget
from vtc.data.images import IMAGE_EXTENSIONS
from vtc.errors import InputError, OutputError
from vtc.exporter import supported_model_types
from vtc.output import building, check_out, publish
from vtc.passes.graph import GraphError
from vtc.passes.model_io import input_dims
from vtc.recipe import RecipeBase
from vtc.report import Report, SourceInfo
from vtc.report_vlm import VLM_GATES, VlmReport
from vtc.source import Source, SourceError, resolve
from vtc.stages import bundle, edge, text, vlm
from vtc.stages.compile import compile_engines
from vtc.stages.compile import options as engine_options
from vtc.stages.compress import Compressed, compress
from vtc.stages.export import Exported, export, to_static
from vtc.stages.load import Loaded, check_memory, load
from vtc.stages.validate import select_inputs, validate
from vtc.validate.tasks import is_dense
from vtc.validate.usertask import TaskFn, load_task
from vtc.vlm import families as vlm_families
from vtc.vlm.families import is_vlm
from vtc.zoo import vtc_home

__all__ = ["Options", "OutputError", "Result", "protected_paths", "run"]


@dataclass
class Options:
    source: str
    recipe: RecipeBase
    out: Path
    batch: int
    images: Path | None = None
    force: bool = False
    allow_pickle: bool = False
    protected: int | None = None  # ONNX sources: leading tokens never merged
    bench: bool = True
    batch_given: bool = False  # --batch was explicit (a static-batch ONNX must then agree)
    captions: list[str] | None = None  # --captions FILE's (image–text models: zero-shot tier)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))


@dataclass
class Result:
    out: Path
    report: Report | VlmReport

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def encoder(self) -> Report:
        """The report of an encoder bundle (TypeError for a vision-language one)."""
        if not isinstance(self.report, Report):
            raise TypeError("a vision-language bundle has a VlmReport")
        return self.report


def protected_paths(spec: str) -> list[tuple[Path, str]]:
    """What an --out must never be, hold or lie inside: the zoo cache and SOURCE (as
    given, before it is resolved: a zoo name is fetched only after the checks)."""
    paths = [(vtc_home(), "the zoo cache ($VTC_HOME)")]
    if spec.strip() and Path(spec).exists():
        paths.append((Path(spec), "the source"))
    return paths


def check_source_spec(spec: str) -> None:
    if not spec.strip():
        raise SourceError("SOURCE is empty (an unset shell variable?); give a checkpoint "
                          "directory, a zoo name or an .onnx file — or leave SOURCE out for "
                          "the zoo's dinov2-small")


def check_engine(recipe: RecipeBase) -> None:
    """Refuse engine options the installed engine cannot honour (a provider this
    onnxruntime lacks, an unknown provider option, a CUDA graph without CUDA) before
    any work."""
    engine, opts = engines.get(recipe.backend.kind), engine_options(recipe)
    engine.check(opts)
    engine.check_precision(opts)


def _check_images(folder: Path) -> None:
    """Fail before any heavy work when --images holds no image files."""
    if not folder.is_dir() or not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file()
    ):
        raise SourceError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                          "give a folder of images or leave --images out")


def run(opts: Options) -> Result:
    """Check every input, then build the bundle in a temp dir beside --out (holding its
    lock) and rename it into place; nothing is left behind on a failure."""
    check_source_spec(opts.source)
    check_engine(opts.recipe)
    check_out(opts.out, opts.force, protected_paths(opts.source))
    if opts.images is not None:
        _check_images(opts.images)
    task = opts.recipe.validate_.task
    task_fn = load_task(task) if task else None  # before any work: an import error is cheap
    src = resolve(opts.source)
    check_out(opts.out, opts.force, [(src.path, "the source")])
    vlm_bundle = is_vlm(src.model_type)
    check_model_type(src, vlm_bundle)
    check_kind(opts, vlm_bundle)
    with building(opts.out, opts.force) as tmp:
        if vlm_bundle:
            report: Report | VlmReport = vlm.build(src, opts.recipe, tmp, opts.images,
                                                   opts.bench, opts.allow_pickle, opts.log)
        else:
            report = build(opts, src, tmp, task_fn)
        publish(tmp, opts.out, replace=opts.force)
    return Result(opts.out, report)


def check_model_type(src: Source, vlm_bundle: bool) -> None:
    """A checkpoint whose model_type vtc builds neither an encoder nor a vision-language
    bundle for is named with both lists (before any recipe check speaks of cuts)."""
    if src.kind == "hf" and not vlm_bundle and src.model_type not in supported_model_types():
        raise SourceError(f"SOURCE {src.spec}: model_type {src.model_type!r} is not supported; "
                          f"vtc exports image encoders ({', '.join(supported_model_types())}) "
                          "and vision-language models "
                          f"({', '.join(sorted(vlm_families.FAMILIES))})")


def check_cuts(recipe: RecipeBase, vlm_bundle: bool) -> None:
    """Cuts outside the encoder (visionzip, fastv, …) need a vision-language model; a
    vision-language model needs an engine kind that runs generation (the registry's
    `Engine.generation`) and takes its decoder's precision from generate.precision."""
    from vtc.backends import engines

    cuts = [m.name for m, _ in recipe.cuts()]
    b = recipe.backend
    if vlm_bundle:
        eng = engines.get(b.kind)
        if eng.generation is None:
            able = [f"{k} ({engines.get(k).generation})" for k in engines.names()
                    if engines.get(k).generation is not None]
            raise InputError(f"backend.kind {b.kind}: that engine cannot run a "
                             "vision-language bundle yet (its graphs run in a generation "
                             f"loop); kinds that can: {', '.join(able)}")
        if b.precision != "fp32":
            raise InputError(f"backend.precision {b.precision}: not supported yet for a "
                             "vision-language bundle; its decoder precision is "
                             "generate.precision (fp32, fp16 or int4): drop backend.precision")
    if cuts and not vlm_bundle:
        raise InputError(f"{', '.join(cuts)} cut(s) visual tokens before or inside a language "
                         "model; this source is an encoder: use a LLaVA checkpoint, or drop "
                         f"{', '.join(cuts)} from method")


# what each kind of bundle does not read: set there, it would be ignored (a VLM reads
# backend.kind, the engine whose generation runtime runs it; check_cuts judges it and
# backend.precision)
_ENCODER_ONLY = ("export", "input", "backend", "validate", "unmerge", "tokens_out")
_VLM_READS = ("backend.kind", "backend.precision")
_VLM_ONLY = ("generate",)


def changed(recipe: RecipeBase, sections: tuple[str, ...],
            read: tuple[str, ...] = ()) -> list[str]:
    """The dotted fields of `sections` (sections or top-level fields) that differ from
    their defaults, but those in `read`."""
    out = []
    for name in sections:
        field = "validate_" if name == "validate" else name
        value = getattr(recipe, field)
        if isinstance(value, BaseModel):
            default = type(value)()
            out += [f"{name}.{k}" for k in type(value).model_fields
                    if getattr(value, k) != getattr(default, k)]
        elif value != RecipeBase.model_fields[field].get_default(call_default_factory=True):
            out.append(name)
    return [f for f in out if f not in read]


def check_kind(opts: Options, vlm_bundle: bool) -> None:
    """Refuse, before any work, what the kind of bundle SOURCE makes would ignore: the
    encoder settings (export, input, backend, validate; --batch other than 1, --protected,
    --captions) for a vision-language model, the generate section for an encoder."""
    check_cuts(opts.recipe, vlm_bundle)
    if vlm_bundle:
        flags = [f for f, on in (("--batch", opts.batch_given and opts.batch != 1),
                                 ("--protected", opts.protected is not None),
                                 ("--captions", opts.captions is not None)) if on]
        fields = changed(opts.recipe, _ENCODER_ONLY, _VLM_READS)
        if flags or fields:
            raise InputError(f"{', '.join([*flags, *fields])}: not used by a vision-language "
                             "bundle (batch 1, one image per prompt, on onnxruntime-genai; "
                             "its settings are the cut methods' and the generate section); "
                             "drop them")
    elif fields := [*changed(opts.recipe, _VLM_ONLY),
                    *(f"gates.{g}" for g in opts.recipe.gates if g in VLM_GATES)]:
        raise InputError(f"{', '.join(fields)}: settings of vision-language bundles; this "
                         "source is an encoder: drop them")


class Steps:
    """`[k/n] message (+elapsed)` progress lines; n is known up front."""

    def __init__(self, log: Callable[[str], None], total: int) -> None:
        self.log, self.total, self.n, self.t = log, total, 0, time.perf_counter()

    def __call__(self, msg: str) -> None:
        self.n += 1
        self.log(f"[{min(self.n, self.total)}/{self.total}] {msg} "
                 f"(+{time.perf_counter() - self.t:.1f}s)")


def _load(opts: Options, src: Source, step: Steps) -> Loaded:
    step(f"loading {src.spec} ({src.model_type or 'onnx'})")
    return load(src, opts.recipe, opts.batch, opts.batch_given, opts.protected,
                opts.allow_pickle, opts.log, opts.captions)


def compress_graph(exported: Exported, budget: Budget, recipe: RecipeBase, loaded: Loaded,
                   tmp: Path, log: Callable[[str], None]) -> Compressed:
    """The compress stage; a symbolic batch the rewritten graph cannot keep falls back to
    the static build batch (baseline too) unless the recipe asked for it. Public for
    benches that build engines stage by stage (bench/peers.py)."""
    try:
        return compress(exported, budget, recipe.unmerge, tmp, prepared=loaded.graph,
                        tokens_out=recipe.tokens_out)
    except GraphError as exc:
        if not exported.dynamic or exported.dynamic_required or "batch dynamic" not in str(exc):
            raise
        log(f"      {exc}: building a static batch of {exported.batch} instead "
            "(export.dynamic_batch: false skips the attempt)")
    return compress(to_static(exported), budget, recipe.unmerge, tmp,
                    tokens_out=recipe.tokens_out)


def build(opts: Options, src: Source, tmp: Path, task_fn: TaskFn | None = None) -> Report:
    """Every stage, writing the bundle into `tmp`; returns the report. `task_fn`: the
    recipe's validate.task, imported."""
    recipe, t0 = opts.recipe, time.perf_counter()
    step = Steps(opts.log, 6 + bool(opts.bench) + bool(recipe.validate_.dataset))
    loaded = _load(opts, src, step)
    check_memory(loaded, recipe.validate_.samples)
    budget = recipe.budget(loaded.geometry, loaded.batch)
    pre = loaded.pre
    step(f"exporting baseline.onnx (opset {recipe.export.opset}, batch "
         f"{'any' if loaded.dynamic else loaded.batch}, {pre.channels}×{pre.height}×"
         f"{pre.width})")
    exported = export(loaded, recipe, tmp, opts.log)
    step(f"rewriting: {budget.label}, tokens {budget.tokens_in} → {budget.tokens_out}, "
         f"FLOPs ratio {budget.flops_ratio:.2f}")
    comp = compress_graph(exported, budget, recipe, loaded, tmp, opts.log)
    trt_lint = edge.lint(comp.path, recipe.backend.kind, opts.log, exported.baseline)
    dense = is_dense(comp.output_shape)
    if recipe.validate_.dataset and dense:
        raise SourceError(f"validate.dataset={recipe.validate_.dataset}: a linear probe needs "
                          "an embedding or logits output, not a dense map; drop the dataset")
    step(f"compiling {recipe.backend.kind} engines")
    inputs = select_inputs(recipe, opts.images, loaded, dense)
    with compile_engines(recipe, exported.baseline, comp.path, tmp, twin=comp.twin,
                         pre=pre, calibration=inputs.x) as eng:
        val = validate(recipe, loaded, budget, eng, inputs, dense, opts.bench, step, opts.log,
                       comp.graph.tokens_out, task_fn)
    zero_shot = None
    if loaded.captions is not None:
        opts.log(f"      text tower: text.onnx, zero-shot agreement on {len(inputs.x)} "
                 f"images × {len(loaded.captions.texts)} captions")
        zero_shot = text.zero_shot(recipe, loaded, tmp, val.references["engine"], inputs.x)
    report = Report(
        vtc_version=vtc.__version__,
        source=SourceInfo(src.spec, src.kind, src.model_type,
                          loaded.family.name if loaded.family else None),
        recipe=recipe.to_dict(), budget=bundle.budget_info(budget), graph=comp.graph,
        engine=eng.info, machine=machine_info(eng.info.providers), fusions=eng.fusions,
        inputs=val.inputs, output=val.output,
        parity=val.parity, fidelity=val.fidelity, dense=val.dense,
        throughput=val.throughput, accuracy=val.accuracy, task=val.task,
        deployment=val.deployment, trt_lint=trt_lint, zero_shot=zero_shot)
    bundle.judge(report, recipe, opts.bench, loaded.geometry)
    report.elapsed_s = round(time.perf_counter() - t0, 2)
    for g in report.gates:
        opts.log(bundle.format_gate(g))
    shape = input_dims(comp.path, pre.name)  # a symbolic batch keeps the source's name
    edge.write(tmp, report, inputs.x, val.references, pre, shape, loaded.batch)
    bundle.write_configs(tmp, src, pre, loaded.geometry, loaded.labels, comp.output_shape)
    bundle.write_preprocess(tmp, pre)
    text_entry = (text.manifest_entry(tmp, zero_shot, shape[0]) if zero_shot is not None
                  else None)
    bundle.write(tmp, report, bundle.manifest(report, src, tmp, shape, exported.opset,
                                              text_entry))
    step(f"bundle complete in {report.elapsed_s:.1f} s")
    return report

