"""Stage 4, compile: build the engines of both graphs with the recipe's engine kind.

The engine comes from the registry (`vtc.backends.engines`, `backend.kind`); the
stage never names one. Both runners are loaded here and closed when the block
ends; the compressed engine's file stays in the bundle, the baseline's is removed
once its fusions are counted. An engine whose class says `fuses_attention` (ort) builds
both graphs with attention fused (`vtc.passes.fuse_attention`), from temp copies outside
the bundle, unless the recipe says `backend.fuse_attention: false`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vtc.backends import engines
from vtc.backends.base import Runner, ZeroFed
from vtc.passes.fuse_attention import fuse_file
from vtc.passes.graph import GraphError
from vtc.recipe import RecipeBase
from vtc.report import EngineInfo, FusionInfo, Preprocess


@dataclass
class Compiled:
    """Both loaded engines; `twin`: the unmerged twin of a merged token output
    (fidelity only; its files are removed when the block ends)."""

    baseline: Runner
    compressed: Runner
    info: EngineInfo
    fusions: FusionInfo | None
    twin: Runner | None = None


def options(recipe: RecipeBase, input_shape: tuple[int, ...] | None = None
            ) -> engines.EngineOptions:
    b = recipe.backend
    return engines.EngineOptions(providers=tuple(b.providers), threads=b.threads, fp16=b.fp16,
                                 input_shapes={"pixel_values": input_shape} if input_shape else {})


@contextmanager
def _twin(recipe: RecipeBase, twin: Path | None, tmp: Path, opts: engines.EngineOptions
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
        for f in [twin, made]:
            for p in [f, f.with_name(f.name + ".data")]:
                p.unlink(missing_ok=True)


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


@contextmanager
def compile_engines(recipe: RecipeBase, baseline: Path, model: Path, tmp: Path,
                    input_shape: tuple[int, ...] | None = None, twin: Path | None = None,
                    pre: Preprocess | None = None) -> Iterator[Compiled]:
    """Build and load both engines (and the unmerged twin's, `twin`); yields them with
    what the build reported. With `pre` naming other graph inputs than the image, the
    runners feed those zeros (`ZeroFed`) and take the image alone."""
    engine = engines.get(recipe.backend.kind)
    opts = options(recipe, input_shape)
    base_file = tmp / f"baseline{engine.suffix}"
    comp_file = tmp / f"model{engine.suffix}"
    with (_fused(recipe, engine, baseline, model) as (base_src, comp_src),
          engine.runner(base_src, base_file, opts) as base_rt,
          engine.runner(comp_src, comp_file, opts) as comp_rt,
          _twin(recipe, twin, tmp, opts) as twin_rt):
        counts = engine.fusions(base_file, comp_file)
        base_file.unlink(missing_ok=True)
        base_file.with_name(base_file.name + ".data").unlink(missing_ok=True)
        info = EngineInfo(kind=engine.name, providers=engine.providers(comp_rt),
                          file=comp_file.name)
        fusions = FusionInfo(**counts) if counts else None
        if pre is not None and pre.zero_inputs:
            zeros = {k: (z.shape, z.dtype) for k, z in pre.zero_inputs.items()}
            yield Compiled(ZeroFed(base_rt, pre.name, zeros), ZeroFed(comp_rt, pre.name, zeros),
                           info, fusions,
                           ZeroFed(twin_rt, pre.name, zeros) if twin_rt is not None else None)
        else:
            yield Compiled(base_rt, comp_rt, info, fusions, twin_rt)
