"""Stage 3, compress: rewrite the baseline graph so that it follows the budget.

`rewrite(model, budget)` is the whole graph rewrite, run as the pass sequence of
`vtc.passes.encoder` (`vtc.passes.base.run`): find the blocks, let the method of every
reducing block write its reduction (`vtc.methods.rewrite`), add proportional attention
where the budget says so, copy merged tokens back to the full grid before a dense
consumer (unmerge), fix the constants that baked the old token count, then prove the
result with strict shape inference and the ONNX checker. `compress` is the stage around
it: it loads the baseline at the right batch (twice, at two probe batches, for a dynamic
batch) and writes model.onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from vtc import methods, passes
from vtc.budget import Budget
from vtc.errors import InputError
from vtc.methods.rewrite import Reduce, merges
from vtc.passes import encoder as enc
from vtc.passes import token_sizes
from vtc.passes.model_io import save_model
from vtc.report import GraphInfo, SiteInfo, TokensOutInfo, UnmergeInfo
from vtc.stages.export import Exported


def rewrite(model: ir.Model, budget: Budget, unmerge: str = "auto",
            tokens_out: str = "unmerge") -> GraphInfo:
    """Rewrite a prepared model in place so that it follows `budget`: the pass sequence
    of `vtc.passes.encoder` (locate, reduce, size bias, unmerge, token sizes, shape
    fix-up, check).

    unmerge: "auto" copies merged tokens back to the full grid when a consumer after
    the last block reshapes tokens into a grid; "always" does so regardless; "never"
    leaves the merged tokens (a grid consumer then fails). tokens_out: a graph output
    that is the token sequence is unmerged ("unmerge") or left merged with a second
    output, `token_sizes` `[B, N']` ("merged")."""
    s = enc.EncoderRewrite(budget, unmerge, tokens_out, merges)
    done = passes.run(model, [enc.Locate(s), Reduce(s), enc.SizeBias(s), enc.Unmerge(s),
                              enc.TokenSizes(s), enc.ShapeFixup(s), enc.Check()])
    info = None
    if done["unmerge"] is not None:
        info = UnmergeInfo(s.blocks[-1].index, budget.tokens_in, done["unmerge"])
    tokens = None
    if s.search is not None and s.search.outputs:
        tokens = TokensOutInfo(mode="unmerge" if s.track else "merged",
                               outputs=[v.name or "" for v in s.search.outputs],
                               tokens=budget.tokens_in if s.track else budget.tokens_out,
                               sizes_output=None if s.track else token_sizes.OUTPUT)
    return GraphInfo(blocks=done["blocks"], sites=done["sites"],
                     constants_fixed=done["constants_fixed"], batch_constants=0,
                     unmerge=info, op_counts_before=s.before,
                     op_counts_after=enc.op_counts(model), tokens_out=tokens,
                     reductions=site_info(budget, s.site_nodes))


def site_info(budget: Budget, nodes: dict[int, int]) -> list[SiteInfo]:
    """The report's record of each reducing block: the budget's formulation and cost
    figures (`vtc.budget.SitePlan`) beside the nodes the rewrite wrote there."""
    out = []
    for sp in budget.sites:
        if sp.block not in nodes:
            continue
        out.append(SiteInfo(
            block=sp.block, method=sp.method, formulation=sp.formulation,  # type: ignore[arg-type]
            chosen_by=sp.chosen_by, nodes=nodes[sp.block],  # type: ignore[arg-type]
            engine=sp.pricing.kind, batch=sp.pricing.batch,
            cost_us={f: round(sp.seconds(f) * 1e6, 2) for f in sp.costs},
            macs={f: c.macs for f, c in sp.costs.items()},
            elements={f: c.elements for f, c in sp.costs.items()},
            model_nodes={f: c.nodes for f, c in sp.costs.items()}))
    return out


@dataclass
class Compressed:
    """model.onnx written; what the rewrite did; the output's static shape.

    twin: for a token-sequence output kept merged (`tokens_out: merged`, merges only),
    the same rewrite with the tokens unmerged, written outside the bundle: what
    per-token fidelity compares against the baseline (None otherwise)."""

    path: Path
    graph: GraphInfo
    output_shape: list[int]
    twin: Path | None = None


def _rewrite_at(exported: Exported, budget: Budget, unmerge: str, tokens_out: str,
                prepared: ir.Model | None) -> tuple[ir.Model, GraphInfo]:
    dynamic = exported.dynamic
    batch = passes.PROBES[0] if dynamic else exported.batch
    model = prepared if prepared is not None and not dynamic else passes.load(
        exported.baseline, batch, exported.size, exported.channels)
    info = rewrite(model, budget, unmerge, tokens_out)
    if dynamic:  # a twin at another batch shows which constants baked it
        twin = passes.load(exported.baseline, passes.PROBES[1], exported.size,
                           exported.channels)
        rewrite(twin, budget, unmerge, tokens_out)
        info.batch_constants = passes.make_batch_dynamic(model, twin,
                                                         name=exported.batch_name)
        passes.check(model)
    return model, info


def _save(model: ir.Model, path: Path) -> None:
    try:
        save_model(model, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc}") from exc


def compress(exported: Exported, budget: Budget, unmerge: str, tmp: Path,
             prepared: ir.Model | None = None, tokens_out: str = "unmerge",
             scratch: Path | None = None) -> Compressed:
    """baseline.onnx → model.onnx following `budget` (dynamic batch: rewritten at two
    probe batches, the constants that differ made symbolic). `prepared` is the
    baseline already loaded and folded at the build batch (rewritten in place).
    `scratch`: where the unmerged twin of a merged token output goes (default: tmp)."""
    model, info = _rewrite_at(exported, budget, unmerge, tokens_out, prepared)
    out_shape = model.graph.outputs[0].shape
    shape = [d if isinstance(d, int) else -1 for d in out_shape] if out_shape is not None else []
    path = tmp / "model.onnx"
    _save(model, path)
    twin = None
    merges = all(methods.get(lp.method).merges for lp in budget.reducing_layers)
    if info.tokens_out is not None and info.tokens_out.mode == "merged" and merges:
        twin_model, _ = _rewrite_at(exported, budget, unmerge, "unmerge", None)
        twin = (scratch or tmp) / ".unmerged-twin.onnx"
        _save(twin_model, twin)
    return Compressed(path, info, shape, twin)
