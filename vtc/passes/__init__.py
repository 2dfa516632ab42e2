"""Graph-rewrite passes on the ONNX IR.

`compress(model, budget)` is the whole rewrite: find the blocks, insert the
budget's merges (ToMe) or prunes (EViT), fix the constants that baked the old
token count, then prove the result with strict shape inference and the ONNX
checker. Each pass lives in its own module with a before → after drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

from vtc.budget import Budget
from vtc.passes.dynamic_batch import PROBES, make_batch_dynamic
from vtc.passes.evit import apply_evit
from vtc.passes.graph import Block, GraphError, NoBlocksError, find_blocks, load, prepare
from vtc.passes.shape_fixup import fix_shapes, record_shapes
from vtc.passes.tome import apply_tome
from vtc.passes.unmerge import find_grid_consumer

__all__ = [
    "PROBES", "Block", "GraphError", "NoBlocksError", "PassResult", "check", "compress",
    "find_blocks", "load", "make_batch_dynamic", "prepare",
]


@dataclass
class PassResult:
    blocks: int
    sites: int  # merge / prune sites inserted
    constants_fixed: int
    batch_constants: int = 0  # rewritten by make_batch_dynamic (dynamic batch only)
    unmerge: dict[str, object] | None = None  # where merged tokens are copied back to N
    op_counts_before: dict[str, int] = field(default_factory=dict)
    op_counts_after: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "blocks": self.blocks,
            "sites": self.sites,
            "constants_fixed": self.constants_fixed,
            "batch_constants": self.batch_constants,
            "unmerge": self.unmerge,
            "op_counts_before": self.op_counts_before,
            "op_counts_after": self.op_counts_after,
        }


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def compress(model: ir.Model, budget: Budget, unmerge: str = "auto") -> PassResult:
    """Rewrite a prepared model in place so that it follows `budget`.

    unmerge (ToMe only): "auto" copies merged tokens back to the full grid when a
    consumer after the last block reshapes tokens into a grid; "always" does so
    regardless; "never" leaves the merged tokens (a grid consumer then fails)."""
    blocks = find_blocks(model)
    if len(blocks) != len(budget.layers):
        raise GraphError(
            f"the budget has {len(budget.layers)} blocks but the graph has {len(blocks)}"
        )
    if blocks[0].tokens != budget.tokens_in:
        raise GraphError(
            f"the budget expects {budget.tokens_in} tokens, the graph has {blocks[0].tokens}"
        )
    before = _op_counts(model)
    old = record_shapes(model)
    reduces = budget.tokens_out < budget.tokens_in
    search = find_grid_consumer(blocks[-1].x_out) if reduces else None
    info = None
    if budget.method == "tome":
        grid = search is not None and bool(search.consumers)
        want = reduces and (unmerge == "always" or (unmerge == "auto" and grid))
        if want and blocks[-1].x_out.is_graph_output():
            raise GraphError("the last block's output is a graph output; vtc cannot unmerge "
                             "it in place (set tome.unmerge: never)")
        sites = apply_tome(model, blocks, budget, unmerge=want)
        if want:
            info = {"after_block": blocks[-1].index, "tokens": budget.tokens_in,
                    "consumers": [n.name for n in search.consumers] if search else []}
    elif budget.method == "evit":
        if search is not None and search.consumers:
            node = search.consumers[0]
            raise GraphError(f"{node.op_type} {node.name!r} reshapes the tokens into a grid, "
                             "which EViT's dropped tokens cannot fill; use a ToMe recipe "
                             "(vtc unmerges before the grid)")
        sites = apply_evit(model, blocks, budget)
    else:
        sites = 0
    try:
        fixed = fix_shapes(model, old) if sites else 0
    except GraphError as exc:
        if search is not None and search.blockers and info is None:
            raise GraphError(f"{exc}; the search for a dense consumer to unmerge before "
                             f"stopped at {search.describe_blocker()}") from exc
        raise
    check(model)
    return PassResult(len(blocks), sites, fixed, op_counts_before=before,
                      op_counts_after=_op_counts(model), unmerge=info)


def check(model: ir.Model) -> None:
    """Strict shape inference and the ONNX checker on the whole model."""
    proto = ir.to_proto(model)
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise GraphError(f"the rewritten graph fails the ONNX checker: {exc}") from exc
