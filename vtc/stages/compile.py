"""Stage 4, compile: build the engines of both graphs with the recipe's engine kind.

The engine comes from the registry (`vtc.backends.engines`, `backend.kind`); the
stage never names one. Two configurations (`vtc.backends.options`):

* **reference** engines (fp32, TF32 off, no CUDA graph): parity, fidelity and the
  probe run on them;
* **deployed** engines (the recipe's precision and provider options; a CUDA graph
  when every node lands on the CUDA EP): the bundle ships the compressed one and
  throughput is timed on both. When the recipe asks for nothing the reference does
  not already do (fp32 on the CPU, or TF32 off), they are the same engines.

An engine whose class says `fuses_attention` (ort) builds both graphs with attention
fused (`vtc.passes.fuse_attention`), from temp copies outside the bundle, unless the
recipe says `backend.fuse_attention: false`; `model.onnx` stays portable. An fp16
deployment on an engine that runs the graph as written (ORT) then gets that graph
converted by `vtc.passes.precision`, and an int8 one gets its weight MatMuls/Gemms
quantized by `vtc.passes.quantize`, calibrated on the validation images (decisions stay
fp32 in both); a builder that takes a flag (TensorRT) gets the flag. All runners are
loaded here and closed when the block ends; only the deployed compressed engine's file
stays in the bundle.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from vtc.backends import engines
from vtc.backends.base import Runner, ZeroFed
from vtc.backends.options import CUDA, EngineOptions, cuda_graph_decision
from vtc.passes.fuse_attention import fuse_file
from vtc.passes.graph import GraphError
from vtc.passes.model_io import graph_inputs
from vtc.passes.precision import to_fp16
from vtc.recipe import RecipeBase
from vtc.report import EngineInfo, FusionInfo, Preprocess, RunConfigInfo

FALLBACK_SHOWN = 50  # nodes off the CUDA EP listed in report.json


@dataclass
class Compiled:
    """The loaded engines. `baseline`/`compressed`: the reference engines (parity,
    fidelity, probe); `deployed_baseline`/`deployed`: the deployed ones when they differ
    (None: the reference engines are deployed as they are); `twin`: the unmerged twin
    of a merged token output (fidelity only; its files are removed when the block ends)."""

    baseline: Runner
    compressed: Runner
    info: EngineInfo
    fusions: FusionInfo | None
    twin: Runner | None = None
    deployed_baseline: Runner | None = None
    deployed: Runner | None = None

    @property
    def timed(self) -> tuple[Runner, Runner]:
        """(baseline, compressed) as deployed: what throughput is measured on."""
        if self.deployed is not None and self.deployed_baseline is not None:
            return self.deployed_baseline, self.deployed
        return self.baseline, self.compressed


def options(recipe: RecipeBase, input_shape: tuple[int, ...] | None = None
            ) -> EngineOptions:
    """The recipe's `backend:` section as the engines read it (option values as the
    strings onnxruntime takes)."""
    from vtc.backends.options import env_threads, option_value

    b = recipe.backend
    return EngineOptions(
        providers=tuple(b.providers), precision=b.precision,
        int8_keep_fp32=None if b.int8_keep_fp32 is None else tuple(b.int8_keep_fp32),
        int8_activations=b.int8_activations,
        threads=b.threads if b.threads is not None else env_threads(),
        provider_options={p: {k: option_value(v) for k, v in o.items()}
                          for p, o in b.provider_options.items()},
        cuda_graph=b.cuda_graph, io_binding=b.io_binding, engine=dict(b.options),
        input_shapes={"pixel_values": input_shape} if input_shape else {})


def _remove(*files: Path, engine: engines.Engine | None = None) -> None:
    """Remove graphs (with their external data) or, given `engine`, built engines (every
    file `engine.files` names)."""
    for f in files:
        for p in (engine.files(f) if engine is not None
                  else [f, f.with_name(f.name + ".data")]):
            p.unlink(missing_ok=True)


@contextmanager
def _twin(recipe: RecipeBase, twin: Path | None, tmp: Path, opts: EngineOptions
          ) -> Iterator[Runner | None]:
    """The unmerged twin's engine (outside the bundle: every file it made is removed)."""
    if twin is None:
        yield None
        return
    engine = engines.get(recipe.backend.kind)
    made = tmp / f".twin{engine.suffix}"
    try:
        with engine.runner(twin, made, opts) as rt:
            yield rt
    finally:
        _remove(twin)
        _remove(made, engine=engine)


@contextmanager
def _fused(recipe: RecipeBase, engine: engines.Engine, *graphs: Path) -> Iterator[list[Path]]:
    """The graphs the engine builds: attention-fused temp copies (removed when the block
    ends) for an engine that `fuses_attention`, else the graphs themselves. A graph the
    pass cannot fuse is built as it is (its engine then shows fewer fused ops)."""
    if not (engine.fuses_attention and recipe.backend.fuse_attention):
        yield list(graphs)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vtc-fused-"))
    try:
        out = []
        for g in graphs:
            try:
                fuse_file(g, tmp / g.name)
                out.append(tmp / g.name)
            except GraphError:
                out.append(g)
        yield out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _zero_feeds(path: Path) -> dict[str, np.ndarray]:
    """Zeros for every graph input (a dynamic dim as 1): enough for one profiled run."""
    model = onnx.load(str(path), load_external_data=False)
    return {name: np.zeros([1 if d is None else d for d in dims], dtype=dtype)
            for name, (dims, dtype) in graph_inputs(model).items()}


def _placement(engine: engines.Engine, graph: Path, opts: EngineOptions
               ) -> tuple[dict[str, int], list[str], EngineOptions]:
    """Where the deployed graph's nodes run and whether it can be a CUDA graph: the
    node counts per provider, the nodes off the CUDA EP, and the options with
    `enable_cuda_graph` set when it can (`vtc.backends.options.cuda_graph_decision`).
    Measured by the engine's `placement` hook (ORT: only when a provider other than
    the CPU is requested; None: nothing to decide)."""
    where = engine.placement(graph, opts, _zero_feeds(graph))
    if where is None:
        return {}, [], opts
    counts: dict[str, int] = {}
    for p in where.values():
        counts[p] = counts.get(p, 0) + 1
    graph_on, elsewhere = cuda_graph_decision(opts, where)
    if graph_on:
        po = {p: dict(o) for p, o in opts.provider_options.items()}
        po.setdefault(CUDA, {})["enable_cuda_graph"] = "1"
        opts = replace(opts, provider_options=po)
    return dict(sorted(counts.items())), elsewhere[:FALLBACK_SHOWN], opts


def _deployed_graphs(engine: engines.Engine, opts: EngineOptions, baseline: Path,
                     model: Path, tmp: Path, calibration: np.ndarray | None = None,
                     image: str = "pixel_values") -> tuple[Path, Path, dict[str, int]]:
    """The graphs the deployed engines build from: converted to fp16, or quantized to
    int8 (static: calibrated on `calibration`, float32 [n, C, H, W] fed as `image`;
    dynamic: no calibration; the layer roles `opts.int8_keep_fp32` names stay fp32),
    for an engine that runs the graph as written; else the graphs themselves."""
    if opts.precision == "fp32" or not engine.converts_precision:
        return baseline, model, {}
    if opts.precision == "int8":
        from vtc.passes.quantize import to_int8

        act = opts.int8_activations  # static without calibration: to_int8 refuses it
        b8, m8 = tmp / ".baseline.int8.onnx", tmp / ".model.int8.onnx"
        keep = opts.int8_keep_fp32
        to_int8(baseline, b8, image, calibration, keep_fp32=keep, activations=act)
        return b8, m8, to_int8(model, m8, image, calibration, keep_fp32=keep,
                               activations=act)
    b16, m16 = tmp / ".baseline.fp16.onnx", tmp / ".model.fp16.onnx"
    to_fp16(baseline, b16)
    return b16, m16, to_fp16(model, m16)


def _nodes(path: Path) -> int:
    if not path.is_file() or path.suffix != ".onnx":
        return 0
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _wants_own_engines(opts: EngineOptions) -> bool:
    """Whether the deployed engines may compute differently from the reference ones:
    fp16, TF32 left on, or a CUDA graph to try."""
    return opts.differs_from_reference() or (CUDA in opts.providers
                                             and opts.cuda_graph != "off")


@contextmanager
def compile_engines(recipe: RecipeBase, baseline: Path, model: Path, tmp: Path,
                    input_shape: tuple[int, ...] | None = None, twin: Path | None = None,
                    pre: Preprocess | None = None, calibration: np.ndarray | None = None
                    ) -> Iterator[Compiled]:
    """Build and load the reference and deployed engines of both graphs (and the
    unmerged twin's, `twin`); yields them with what the build reported. With `pre`
    naming other graph inputs than the image, the runners feed those zeros (`ZeroFed`)
    and take the image alone. `calibration` (float32 [n, C, H, W]): the images an int8
    deployment is calibrated on."""
    engine = engines.get(recipe.backend.kind)
    deploy = options(recipe, input_shape)
    ref = deploy.reference()
    base_file, comp_file = tmp / f"baseline{engine.suffix}", tmp / f"model{engine.suffix}"
    placement: dict[str, int] = {}
    fallback: list[str] = []
    conversion: dict[str, int] = {}
    with ExitStack() as stack:
        baseline, model = stack.enter_context(_fused(recipe, engine, baseline, model))
        base_g, model_g = baseline, model
        if _wants_own_engines(deploy):
            base_g, model_g, conversion = _deployed_graphs(
                engine, deploy, baseline, model, tmp, calibration,
                pre.name if pre is not None else "pixel_values")
            stack.callback(_remove, *{base_g, model_g} - {baseline, model})
            placement, fallback, deploy = _placement(engine, model_g, deploy)
        own = deploy.differs_from_reference() or _cuda_graph(deploy)
        ref_b = stack.enter_context(engine.runner(
            baseline, tmp / f".ref.baseline{engine.suffix}" if own else base_file, ref))
        ref_c = stack.enter_context(engine.runner(
            model, tmp / f".ref.model{engine.suffix}" if own else comp_file, ref))
        if own:
            stack.callback(_remove, tmp / f".ref.baseline{engine.suffix}",
                           tmp / f".ref.model{engine.suffix}", engine=engine)
            dep_b = stack.enter_context(engine.runner(base_g, base_file, deploy))
            dep_c = stack.enter_context(engine.runner(model_g, comp_file, deploy))
        else:
            dep_b, dep_c, deploy = ref_b, ref_c, ref
        twin_rt = stack.enter_context(_twin(recipe, twin, tmp, ref))
        counts = engine.fusions(base_file, comp_file)
        nodes = {"baseline": _nodes(base_file), "compressed": _nodes(comp_file)}
        _remove(base_file, engine=engine)
        info = EngineInfo(
            kind=engine.name, providers=engine.providers(dep_c), file=comp_file.name,
            precision=deploy.precision, provider_options=_options(deploy),
            cuda_graph=_cuda_graph(deploy), io_binding=deploy.io_binding and engine.binds_io,
            reference=RunConfigInfo("fp32", _options(ref)) if own else None,
            nodes={k: v for k, v in nodes.items() if v}, placement=placement,
            fallback=fallback, conversion=conversion)
        fusions = FusionInfo(**counts) if counts else None
        wrap = _wrapper(pre)
        yield Compiled(wrap(ref_b), wrap(ref_c), info, fusions,
                       wrap(twin_rt) if twin_rt is not None else None,
                       wrap(dep_b) if own else None, wrap(dep_c) if own else None)


def _cuda_graph(opts: EngineOptions) -> bool:
    return opts.options_for(CUDA).get("enable_cuda_graph", "0") not in ("0", "")


def _options(opts: EngineOptions) -> dict[str, dict[str, str]]:
    return {p: o for p in opts.providers if (o := opts.options_for(p))}


def _wrapper(pre: Preprocess | None) -> Callable[[Runner], Runner]:
    """Runners that take the image alone and feed the graph's other inputs zeros."""
    if pre is None or not pre.zero_inputs:
        return lambda rt: rt
    zeros = {k: (z.shape, z.dtype) for k, z in pre.zero_inputs.items()}
    name = pre.name
    return lambda rt: ZeroFed(rt, name, zeros)
