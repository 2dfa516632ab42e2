"""The pass of the encoder rewrite that knows the methods: every reducing block's
method writes its reduction (`vtc.passes.encoder` draws the whole sequence).

In each block whose plan reduces, after the attention residual Add::

    before:  x_mid[B, N, C] ──────────────────────────────────────────► MLP residual …
    after:   x_mid ─► batch-first view ─► method.emit ─► x'[B, N', C] ─► MLP residual …
                                                     └─► size'[B, N', 1], slots[B, N]

Sizes and slots thread from block to block: ``sizes_in[i]`` (what block i's
proportional attention reads, `SizeBias`) and the composed slot map the `Unmerge`
pass reads go into the shared `EncoderRewrite` state.
"""

from __future__ import annotations

import onnx_ir as ir

from vtc.budget import NONE
from vtc.methods.base import Site
from vtc.methods.merging import unit_sizes
from vtc.methods.registry import get
from vtc.passes import layout
from vtc.passes.emit import Emitter, rewire
from vtc.passes.encoder import StatePass
from vtc.passes.graph import GraphError
from vtc.passes.unmerge import compose

__all__ = ["Reduce", "merges"]


def merges(name: str) -> bool:
    """Whether the registered method `name` merges (its tokens can be unmerged)."""
    return get(name).merges


class Reduce(StatePass):
    """Every reducing block's reduction written (done: the blocks rewritten)."""

    name = "sites"

    def requires(self, model: ir.Model) -> None:
        if not self.s.blocks:
            raise GraphError("the reductions are written after the blocks are located")

    def apply(self, model: ir.Model) -> bool:
        s = self.s
        # a token output kept merged carries sizes from the first reduction on, prunes too
        carry = s.merged_seq
        size: ir.Value | None = None
        total: ir.Value | None = None
        s.sizes_in = []
        for blk, plan in zip(s.blocks, s.budget.layers, strict=True):
            s.sizes_in.append(size)
            if plan.method == NONE:
                continue
            method = get(plan.method)
            em = Emitter(model.graph, f"vtc_{plan.method}{blk.index}", method.extra_ops)
            x = layout.batch_first(em, blk, blk.x_mid)
            if size is None and carry and not method.merges:
                size = unit_sizes(em, x)
            view = layout.method_view(em, blk, plan.tokens_in)
            out = method.emit(Site(em, view, x, size, plan, s.budget.protected, s.track))
            size = out.size
            if s.track:
                assert out.slots is not None, f"{plan.method} gave no slots to unmerge with"
                total = compose(em, total, out.slots)
            x_new = layout.stream_layout(em, blk, out.x)
            new_nodes = list(em.nodes)
            s.site_nodes[blk.index] = len(new_nodes)
            em.insert_after(blk.attn_add)
            rewire(blk.x_mid, x_new, new_nodes)
            s.sites += 1
        s.size, s.slots = size, total
        self.done = s.sites
        return s.sites > 0
