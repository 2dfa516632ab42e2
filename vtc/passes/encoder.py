"""The encoder rewrite as a sequence of passes (`vtc.passes.base`) over one shared state.

An encoder graph that follows a static budget is written in seven passes; each reads
and extends `EncoderRewrite`, the state of this one rewrite::

    Locate      find the blocks (by structure), check them against the budget, find
                the dense consumer or token output after the last block, decide unmerge
    Reduce      every reducing block's method writes its reduction after the block's
                attention residual (`vtc.methods.rewrite`: the one pass that knows methods)
    SizeBias    proportional attention: log(size) into the logits of the blocks after a merge
    Unmerge     copy the merged tokens back to all N before the dense consumer
    TokenSizes  a merged token output gets `token_sizes` `[B, N']` beside it
    ShapeFixup  rewrite the constants that baked the old token count
    Check       strict shape inference and the ONNX checker

Encoders and the vision tower of a vision-language model run the same sequence
(`vtc.stages.compress.rewrite`). Method names reach this module only as strings: the
state's ``merges(name)`` says whether a method merges (its tokens can be unmerged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx_ir as ir

from vtc.passes import token_sizes
from vtc.passes.base import Pass
from vtc.passes.graph import Block, GraphError, find_blocks
from vtc.passes.model_io import check
from vtc.passes.shape_fixup import fix_shapes, record_shapes
from vtc.passes.size_bias import add_size_bias
from vtc.passes.unmerge import GridSearch, apply_unmerge, find_grid_consumer

if TYPE_CHECKING:
    from vtc.budget import Budget

__all__ = ["Check", "EncoderRewrite", "Locate", "ShapeFixup", "SizeBias", "StatePass",
           "TokenSizes", "Unmerge", "op_counts"]


def op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class EncoderRewrite:
    """One rewrite's inputs and what its passes found and made.

    unmerge: "auto" | "always" | "never"; tokens_out: "unmerge" | "merged";
    merges(name): True for a merge method. sizes_in[i]: the size tensor `[B, N_i, 1]`
    entering block i (None while every size is 1); size: after the last block;
    slots: `[B, N]` the slot of every input token after the last block (for unmerge)."""

    budget: Budget
    unmerge: str
    tokens_out: str
    merges: Callable[[str], bool]
    blocks: list[Block] = field(default_factory=list)
    search: GridSearch | None = None
    track: bool = False
    merged_seq: bool = False
    old_shapes: dict[int, list[int]] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)
    sizes_in: list[ir.Value | None] = field(default_factory=list)
    size: ir.Value | None = None
    slots: ir.Value | None = None
    sites: int = 0
    # block → nodes its reduction added, with the log-size biases its sizes cause in the
    # blocks after it (up to the next reduction): what one reduction step costs in launches
    site_nodes: dict[int, int] = field(default_factory=dict)


class StatePass(Pass):
    """A pass of this sequence: it reads and extends the shared `EncoderRewrite`."""

    def __init__(self, state: EncoderRewrite) -> None:
        super().__init__()
        self.s = state


class Locate(StatePass):
    """Blocks found and fitted to the budget; the unmerge decision (module docstring)."""

    name = "blocks"

    def apply(self, model: ir.Model) -> bool:
        s, budget = self.s, self.s.budget
        s.blocks = find_blocks(model)
        if len(s.blocks) != len(budget.layers):
            raise GraphError(f"the budget has {len(budget.layers)} blocks but the graph has "
                             f"{len(s.blocks)}")
        if s.blocks[0].tokens != budget.tokens_in:
            raise GraphError(f"the budget expects {budget.tokens_in} tokens, the graph has "
                             f"{s.blocks[0].tokens}")
        s.before, s.old_shapes = op_counts(model), record_shapes(model)
        last = s.blocks[-1]
        reduced = budget.tokens_out < budget.tokens_in
        search = (find_grid_consumer(last.x_out, last.token_axis)
                  if reduced or s.tokens_out == "merged" else None)
        if s.tokens_out == "merged" and search is not None and not search.outputs:
            raise GraphError(no_token_output(model))
        s.search = search if reduced else None  # nothing reduced: nothing to unmerge
        s.track = want_unmerge(s)
        if s.track and last.x_out is last.x_mid:
            raise GraphError("vtc found no MLP residual Add after the last block's attention, "
                             "so it has no place to unmerge the tokens; set tokens_out: merged")
        s.merged_seq = s.search is not None and bool(s.search.outputs) and not s.track
        self.done = len(s.blocks)
        return False


def want_unmerge(s: EncoderRewrite) -> bool:
    """Whether to copy the merged tokens back to all N after the last block: before a
    grid consumer (unmerge: auto), always (unmerge: always), or for a token-sequence
    graph output (tokens_out: unmerge)."""
    search, mode, tokens_out = s.search, s.unmerge, s.tokens_out
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
    prunes = sorted({lp.method for lp in s.budget.reducing_layers if not s.merges(lp.method)})
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


def no_token_output(model: ir.Model) -> str:
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


class SizeBias(StatePass):
    """log(size) added to the attention logits of every block whose plan asks for it
    and that a merge has reached (done: the blocks biased)."""

    name = "size_bias"

    def requires(self, model: ir.Model) -> None:
        if len(self.s.sizes_in) != len(self.s.blocks):
            raise GraphError("proportional attention runs after the reductions are written")

    def apply(self, model: ir.Model) -> bool:
        biased, sites = [], self.s.site_nodes
        for blk, plan, size in zip(self.s.blocks, self.s.budget.layers, self.s.sizes_in,
                                   strict=True):
            if plan.attn_bias and size is not None:
                added = add_size_bias(model.graph, blk, size)
                before = [b for b in sites if b < blk.index]
                if before:
                    sites[max(before)] += added
                biased.append(blk.index)
        self.done = biased
        return bool(biased)


class Unmerge(StatePass):
    """The merged tokens copied back to the full grid after the last block (done: the
    consumers unmerged for, or None)."""

    name = "unmerge"

    def apply(self, model: ir.Model) -> bool:
        s = self.s
        if not (s.track and s.slots is not None and s.search is not None):
            return False
        apply_unmerge(model, s.blocks[-1], s.slots)
        self.done = ([n.name or n.op_type for n in s.search.consumers]
                     + [f"output {v.name}" for v in s.search.outputs])
        return True


class TokenSizes(StatePass):
    """A token output left merged gets `token_sizes` `[B, N']` (done: True if added)."""

    name = "token_sizes"

    def apply(self, model: ir.Model) -> bool:
        s = self.s
        self.done = s.merged_seq and s.size is not None
        if self.done:
            assert s.size is not None
            token_sizes.add_sizes_output(model, s.size, s.budget.tokens_out)
        return bool(self.done)


class ShapeFixup(StatePass):
    """Constants that baked the old token count rewritten (done: how many)."""

    name = "constants_fixed"

    def apply(self, model: ir.Model) -> bool:
        s = self.s
        try:
            self.done = fix_shapes(model, s.old_shapes) if s.sites else 0
        except GraphError as exc:
            if s.search is not None and s.search.blockers and not s.track:
                raise GraphError(f"{exc}; the search for a dense consumer to unmerge before "
                                 f"stopped at {s.search.describe_blocker()}") from exc
            raise
        return bool(self.done)


class Check(Pass):
    """Strict shape inference and the ONNX checker on the result (its `ensures`)."""

    name = "checked"

    def apply(self, model: ir.Model) -> bool:
        return False

    def ensures(self, model: ir.Model) -> None:
        check(model)
        self.done = True
