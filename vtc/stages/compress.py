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
from vtc.methods.merging import unit_sizes
from vtc.passes import layout, token_sizes
from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import Block, GraphError, find_blocks
from vtc.passes.model_io import save_model
from vtc.passes.shape_fixup import fix_shapes, record_shapes
from vtc.passes.size_bias import add_size_bias
from vtc.passes.unmerge import GridSearch, apply_unmerge, compose, find_grid_consumer
from vtc.report import GraphInfo, TokensOutInfo, UnmergeInfo
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


def _want_unmerge(budget: Budget, search: GridSearch | None, mode: str, tokens_out: str
                  ) -> bool:
    """Whether to copy the merged tokens back to all N after the last block: before a
    grid consumer (unmerge: auto), always (unmerge: always), or for a token-sequence
    graph output (tokens_out: unmerge)."""
    if search is None:  # nothing is reduced
        return False
    grid, seq = bool(search.consumers), bool(search.outputs)
    if grid and tokens_out == "merged" and seq:
        raise GraphError(f"tokens_out: merged, but {search.consumers[0].op_type} "
                         f"{search.consumers[0].name!r} reshapes the tokens into a grid that "
                         "needs all of them; set tokens_out: unmerge")
    if seq and mode == "never" and tokens_out == "unmerge":
        raise GraphError("the graph's output is the token sequence and unmerge: never leaves "
                         "it with fewer tokens; set tokens_out: merged (adds token_sizes) or "
                         "drop unmerge: never")
    want = mode == "always" or (mode == "auto" and (grid or (seq and tokens_out == "unmerge")))
    prunes = sorted({lp.method for lp in budget.reducing_layers
                     if not methods.get(lp.method).merges})
    if prunes and want:
        what = (f"{search.consumers[0].op_type} {search.consumers[0].name!r} reshapes the "
                "tokens into a grid" if grid else "unmerge: always was asked" if
                mode == "always" else "the graph's output is the token sequence (tokens_out: "
                "unmerge)")
        fix = ("set tokens_out: merged (token_sizes beside the tokens), or use a merge "
               "method such as tome" if seq and not grid else
               "use a merge method such as tome (vtc unmerges before the grid)")
        raise GraphError(f"{what}, which {'+'.join(prunes)}'s dropped tokens cannot fill; "
                         f"{fix}")
    return want


def _reduce(model: ir.Model, blocks: list[Block], budget: Budget, track: bool,
            sizes: bool) -> tuple[int, ir.Value | None, ir.Value | None]:
    """Write every block's reduction; returns (sites, sizes `[B, N', 1]`, slot map
    `[B, N]`). `sizes`: carry sizes from the first reduction on, even for a prune."""
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
        x = layout.batch_first(em, blk, blk.x_mid)
        if size is None and sizes and not method.merges:
            size = unit_sizes(em, x)
        view = layout.method_view(em, blk, plan.tokens_in)
        out = method.emit(methods.Site(em, view, x, size, plan, budget.protected, track))
        size = out.size
        if track:
            assert out.slots is not None, f"{plan.method} gave no slots to unmerge with"
            total = compose(em, total, out.slots)
        x_new = layout.stream_layout(em, blk, out.x)
        new_nodes = list(em.nodes)
        em.insert_after(blk.attn_add)
        rewire(blk.x_mid, x_new, new_nodes)
        sites += 1
    return sites, size, total


def _tokens_info(search: GridSearch | None, unmerged: bool, tokens: int) -> TokensOutInfo | None:
    if search is None or not search.outputs:
        return None
    return TokensOutInfo(mode="unmerge" if unmerged else "merged",
                         outputs=[v.name or "" for v in search.outputs], tokens=tokens,
                         sizes_output=None if unmerged else token_sizes.OUTPUT)


def _no_token_output(model: ir.Model) -> str:
    """tokens_out: merged on a graph none of whose outputs is the token sequence."""
    def shape(v: ir.Value) -> str:
        dims = list(v.shape) if v.shape is not None else []
        return "[" + ", ".join(str(d) for d in dims) + "]"

    def kind(v: ir.Value) -> str:
        rank = len(v.shape) if v.shape is not None else 0
        return ("one vector per image (logits or an embedding)" if rank == 2 else
                "a dense map" if rank == 4 else f"a rank-{rank} tensor")

    outs = "; ".join(f"{v.name} {shape(v)} is {kind(v)}" for v in model.graph.outputs)
    return (f"tokens_out: merged, but no output of this graph is the token sequence [B, N, D] "
            f"that it keeps merged ({outs}); drop tokens_out (it is for encoders whose output "
            "is the tokens, e.g. last_hidden_state)")


def rewrite(model: ir.Model, budget: Budget, unmerge: str = "auto",
            tokens_out: str = "unmerge") -> GraphInfo:
    """Rewrite a prepared model in place so that it follows `budget`.

    unmerge: "auto" copies merged tokens back to the full grid when a consumer after
    the last block reshapes tokens into a grid; "always" does so regardless; "never"
    leaves the merged tokens (a grid consumer then fails). tokens_out: a graph output
    that is the token sequence is unmerged ("unmerge") or left merged with a second
    output, `token_sizes` `[B, N']` ("merged")."""
    blocks = find_blocks(model)
    _check_fit(blocks, budget)
    before, old = _op_counts(model), record_shapes(model)
    last = blocks[-1]
    search = (find_grid_consumer(last.x_out, last.token_axis)
              if budget.tokens_out < budget.tokens_in or tokens_out == "merged" else None)
    if tokens_out == "merged" and search is not None and not search.outputs:
        raise GraphError(_no_token_output(model))
    if budget.tokens_out >= budget.tokens_in:
        search = None  # nothing is reduced: nothing to unmerge
    track = _want_unmerge(budget, search, unmerge, tokens_out)
    if track and last.x_out is last.x_mid:
        raise GraphError("vtc found no MLP residual Add after the last block's attention, so "
                         "it has no place to unmerge the tokens; set tokens_out: merged")
    merged_seq = search is not None and bool(search.outputs) and not track
    sites, size, total = _reduce(model, blocks, budget, track, merged_seq)
    info = None
    if track and total is not None and search is not None:
        apply_unmerge(model, last, total)
        info = UnmergeInfo(last.index, budget.tokens_in,
                           [n.name or n.op_type for n in search.consumers]
                           + [f"output {v.name}" for v in search.outputs])
    if merged_seq and size is not None:
        token_sizes.add_sizes_output(model, size, budget.tokens_out)
    try:
        fixed = fix_shapes(model, old) if sites else 0
    except GraphError as exc:
        if search is not None and search.blockers and info is None:
            raise GraphError(f"{exc}; the search for a dense consumer to unmerge before "
                             f"stopped at {search.describe_blocker()}") from exc
        raise
    passes.check(model)
    return GraphInfo(blocks=len(blocks), sites=sites, constants_fixed=fixed, batch_constants=0,
                     unmerge=info, op_counts_before=before, op_counts_after=_op_counts(model),
                     tokens_out=_tokens_info(search, track, budget.tokens_in if track
                                             else budget.tokens_out))


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
