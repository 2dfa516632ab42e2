"""Attention layouts: show every block to the methods as `[B, H, N, N]` and `[B, N, C]`.

The methods (`vtc.methods`) read a block's keys as `Kᵀ [B, H, D, N]`, its
attention as `[B, H, N, N]`, and reduce a batch-first stream `[B, N, C]`.
`torch.nn.MultiheadAttention` exports two other layouts (`vtc.passes.graph`
finds both); this pass adds the views, with static shapes, and nothing else::

    folded heads (logits [B·H, N, N]):
        Kᵀ[B·H, D, N]    ─► Reshape[B, H, D, N]   ─► the method's metric
        probs[B·H, N, N] ─► Reshape[B, H, N, N]   ─► the method's scores

    sequence-first stream (x_mid [N, B, C]):
        before:  x_mid[N, B, C] ───────────────────────────────────────────────► LN ─► MLP
        after:   x_mid[N, B, C] ─► Transpose ─► reduce [B, N', C] ─► Transpose ─► LN ─► MLP
                                                                   x'[N', B, C]

The reshape of `[B·H, …]` to `[B, H, …]` is batch-major, as nn.MultiheadAttention
lays its heads out (`b·H + h`).
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from vtc.passes.emit import Emitter
from vtc.passes.fuse_attention_io import Layout, find_source
from vtc.passes.graph import Block, static_dims


def _unfold(em: Emitter, v: ir.Value, blk: Block, dims: list[int]) -> ir.Value:
    """`[B·H, a, b]` → `[B, H, a, b]` (`dims` = [a, b])."""
    return em.op("Reshape", v, em.const([blk.batch, blk.heads, *dims]))


def method_view(em: Emitter, blk: Block, tokens: int) -> Block:
    """The block as the methods read it when `tokens` enter it: `key_t` `[B, H, D, N]`
    and `probs` `[B, H, N, N]` (reshapes emitted into `em` for a folded block; else
    `blk` itself)."""
    if not blk.folded:
        return blk
    kd = static_dims(blk.key_t)
    assert kd is not None and len(kd) == 3, f"folded keys are [B·H, D, N], got {kd}"
    return dataclasses.replace(
        blk, key_t=_unfold(em, blk.key_t, blk, [kd[1], tokens]),
        probs_view=_unfold(em, blk.softmax.outputs[0], blk, [tokens, tokens]))


def key_rows(em: Emitter, blk: Block, tokens: int) -> ir.Value:
    """The block's keys averaged over heads, `[B, N, D]` (a merge's metric before its
    normalisation) when `tokens` enter it, `blk` as `method_view` gives it.

    Read from the key projection `[B, N, H·D]` (or `[B·N, H·D]`) when the moves that
    make `Kᵀ` from it can be undone (`fuse_attention_io.find_source`): a Reshape to
    `[B, N, H, D]` and a mean over H. An engine that fuses attention then reads the
    projection itself and drops `Kᵀ`'s transposes and scale. A scalar factor on the way
    (an exporter's split of the softmax scale) is left out: the metric is normalised,
    which cancels it. Otherwise from `Kᵀ [B, H, D, N]`: the mean over H, transposed."""
    kd = static_dims(blk.key_t)
    if not blk.folded and kd is not None and len(kd) == 4:
        # the shapes are the graph's before the rewrite (the shape fix-up runs last)
        lay = Layout(blk.batch, blk.heads, kd[3], kd[2], kd[2], False)
        found = find_source(blk.key_t, lay, "kt")
        if found is not None:
            k = em.op("Reshape", found[0], em.const([-1, tokens, blk.heads, kd[2]]))
            return em.reduce("ReduceMean", k, [2], 0)
    return em.op("Transpose", em.reduce("ReduceMean", blk.key_t, [1], 0), perm=[0, 2, 1])


def batch_first(em: Emitter, blk: Block, x: ir.Value) -> ir.Value:
    """The block's stream as `[B, N, C]` (a Transpose when it is sequence-first)."""
    return em.op("Transpose", x, perm=[1, 0, 2]) if blk.seq_first else x


def stream_layout(em: Emitter, blk: Block, x: ir.Value) -> ir.Value:
    """A batch-first `[B, N', C]` back in the block's own layout (`[N', B, C]` when
    sequence-first)."""
    return em.op("Transpose", x, perm=[1, 0, 2]) if blk.seq_first else x


def logit_bias(em: Emitter, blk: Block, bias: ir.Value) -> ir.Value:
    """A key bias `[B, 1, 1, N]` in the layout of the block's logits: itself, or
    `[B·H, 1, N]` for folded heads (expanded over H, then folded)."""
    if not blk.folded:
        return bias
    wide = em.op("Expand", bias, em.const([1, blk.heads, 1, 1]))  # [B, H, 1, N]
    return em.op("Reshape", wide, em.const([blk.batch * blk.heads, 1, -1]))
