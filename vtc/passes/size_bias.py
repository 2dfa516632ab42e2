"""Proportional attention: add log(size) to a block's attention logits.

Once tokens are merged, a token that stands for s originals should get the
attention weight of s tokens (ToMe §3). Before the Softmax of the block::

    before:  logits[B, H, N, N] ──────────────────────────────────────────► Softmax
    after:   logits[B, H, N, N] ─► Add(Reshape(Log(s), [B, 1, 1, N])) ─► Softmax

`s` is the `[B, N, 1]` size tensor the merges carry beside the stream. Folded
heads (logits `[B·H, N, N]`, nn.MultiheadAttention) get the bias as `[B·H, 1, N]`
(`vtc.passes.layout.logit_bias`).
"""

from __future__ import annotations

import onnx_ir as ir

from vtc.passes.emit import Emitter
from vtc.passes.graph import Block
from vtc.passes.layout import logit_bias


def add_size_bias(graph: ir.Graph, blk: Block, size: ir.Value) -> int:
    """logits[B, H, N, N] += log(s)[B, 1, 1, N] right before the block's Softmax
    (folded logits `[B·H, N, N]`: += `[B·H, 1, N]`). Returns the nodes added."""
    em = Emitter(graph, f"vtc_size_bias{blk.index}")
    logs = em.op("Reshape", em.op("Log", size), em.const([0, 1, 1, -1]))  # [B, 1, 1, N]
    bias = logit_bias(em, blk, logs)
    logits = blk.softmax.inputs[0]
    assert logits is not None
    new_logits = em.op("Add", logits, bias)
    added = len(em.nodes)
    em.insert_before(blk.softmax)
    blk.softmax.replace_input_with(0, new_logits)
    return added
