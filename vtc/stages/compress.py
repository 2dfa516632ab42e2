"""Stage 3, compress: rewrite the baseline graph so that it follows the budget.

`rewrite(model, budget)` is the whole graph rewrite: find the blocks, let the
method of every reducing block write its reduction (`vtc.methods`), add
proportional attention where the budget says so, copy merged tokens back to the
full grid before a dense consumer (unmerge), fix the constants that baked the old
token count, then prove the result with strict shape inference and the ONNX
checker. `compress` is the stage around it: it loads the baseline at the right
batch (twice, at two probe batches, for a dynamic batch) and writes model.onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from vtc import methods, passes
from vtc.budget import NONE, Budget
from vtc.errors import InputError
from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import Block, GraphError, find_blocks
from vtc.passes.shape_fixup import fix_shapes, record_shapes
from vtc.passes.size_bias import add_size_bias
from vtc.passes.unmerge import GridSearch, apply_unmerge, compose, find_grid_consumer
from vtc.report import GraphInfo, UnmergeInfo
from vtc.stages.export import Exported


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _check_fit(blocks: list[Block], budget: Budget) -> None:
    if len(blocks) != len(budget.layers):
        raise GraphError(
            f"the budget has {len(budget.layers)} blocks but the graph has {len(blocks)}")
    if blocks[0].tokens != budget.tokens_in:
        raise GraphError(
            f"the budget expects {budget.tokens_in} tokens, the graph has {blocks[0].tokens}")


def _want_unmerge(budget: Budget, search: GridSearch | None, mode: str,
                  last: Block) -> bool:
    """Whether to copy the merged tokens back to all N after the last block."""
    if search is None:  # nothing is reduced
        return False
    grid = bool(search.consumers)
    prunes = sorted({lp.method for lp in budget.reducing_layers
                     if not methods.get(lp.method).merges})
    if prunes and (grid or mode == "always"):
        what = (f"{search.consumers[0].op_type} {search.consumers[0].name!r} reshapes the "
                "tokens into a grid" if grid else "unmerge: always was asked")
        raise GraphError(f"{what}, which {'+'.join(prunes)}'s dropped tokens cannot fill; use a "
                         "merge method such as tome (vtc unmerges before the grid)")
    want = mode == "always" or (mode == "auto" and grid)
    if want and last.x_out.is_graph_output():
        raise GraphError("the last block's output is a graph output; vtc cannot unmerge it in "
                         "place (set unmerge: never)")
    return want


def rewrite(model: ir.Model, budget: Budget, unmerge: str = "auto") -> GraphInfo:
    """Rewrite a prepared model in place so that it follows `budget`.

    unmerge: "auto" copies merged tokens back to the full grid when a consumer after
    the last block reshapes tokens into a grid; "always" does so regardless; "never"
    leaves the merged tokens (a grid consumer then fails)."""
    blocks = find_blocks(model)
    _check_fit(blocks, budget)
    before, old = _op_counts(model), record_shapes(model)
    reduces = budget.tokens_out < budget.tokens_in
    search = find_grid_consumer(blocks[-1].x_out) if reduces else None
    track = _want_unmerge(budget, search, unmerge, blocks[-1])
    size: ir.Value | None = None
    total: ir.Value | None = None
    sites = 0
    for blk, plan in zip(blocks, budget.layers, strict=True):
        if plan.attn_bias and size is not None:
            add_size_bias(model.graph, blk, size)
        if plan.method == NONE:
            continue
        method = methods.get(plan.method)
        em = Emitter(model.graph, f"vtc_{plan.method}{blk.index}", method.extra_ops)
        out = method.emit(methods.Site(
            em, blk, blk.x_mid, size, plan, budget.protected, track))
        size = out.size
        if track:
            assert out.slots is not None, f"{plan.method} gave no slots to unmerge with"
            total = compose(em, total, out.slots)
        new_nodes = list(em.nodes)
        em.insert_after(blk.attn_add)
        rewire(blk.x_mid, out.x, new_nodes)
        sites += 1
    info = None
    if track and total is not None and search is not None:
        apply_unmerge(model, blocks[-1], total)
        info = UnmergeInfo(blocks[-1].index, budget.tokens_in,
                           [n.name or n.op_type for n in search.consumers])
    try:
        fixed = fix_shapes(model, old) if sites else 0
    except GraphError as exc:
        if search is not None and search.blockers and info is None:
            raise GraphError(f"{exc}; the search for a dense consumer to unmerge before "
                             f"stopped at {search.describe_blocker()}") from exc
        raise
    passes.check(model)
    return GraphInfo(blocks=len(blocks), sites=sites, constants_fixed=fixed, batch_constants=0,
                     unmerge=info, op_counts_before=before, op_counts_after=_op_counts(model))


@dataclass
class Compressed:
    """model.onnx written; what the rewrite did; the output's static shape."""

    path: Path
    graph: GraphInfo
    output_shape: list[int]


def compress(exported: Exported, budget: Budget, unmerge: str, tmp: Path,
             prepared: ir.Model | None = None) -> Compressed:
    """baseline.onnx → model.onnx following `budget` (dynamic batch: rewritten at two
    probe batches, the constants that differ made symbolic). `prepared` is the
    baseline already loaded and folded at the build batch (rewritten in place)."""
    dynamic = exported.dynamic
    batch = passes.PROBES[0] if dynamic else exported.batch
    model = prepared if prepared is not None and not dynamic else passes.load(
        exported.baseline, batch, exported.size, exported.channels)
    info = rewrite(model, budget, unmerge)
    if dynamic:  # a twin at another batch shows which constants baked it
        twin = passes.load(exported.baseline, passes.PROBES[1], exported.size,
                           exported.channels)
        rewrite(twin, budget, unmerge)
        info.batch_constants = passes.make_batch_dynamic(model, twin)
        passes.check(model)
    out_shape = model.graph.outputs[0].shape
    shape = [d if isinstance(d, int) else -1 for d in out_shape] if out_shape is not None else []
    path = tmp / "model.onnx"
    try:
        ir.save(model, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc}") from exc
    return Compressed(path, info, shape)
