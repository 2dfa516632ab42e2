"""ToMe: bipartite soft matching with a static r per block (docs/algorithms.md).

Before (one block, N tokens)::

    x_in ─► LN ─► attn(K) ─► proj ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add ─► x_out

After (r merges in this block; sizes s travel beside the stream)::

    x_in ─► LN ─► attn(K, logits + log s) ─► proj ─► Add ─► x_mid[B,N,C]
                                                             │
      Kᵀ[B,H,D,N] ─► ReduceMean(H) ─► L2-normalise ─► split a/b ─► MatMul ─► ReduceMax/ArgMax
                                                             │           └► TopK ─► src, unm, dst
      x_mid, s ─► GatherElements(src, unm) ─► one-hot(dst) MatMul (weighted sums) ─► Div
                                                             ▼
                                 x'[B, N-r, C] = concat(protected, a[unm], b') ─► LN ─► MLP ─► Add

The one-hot MatMul replaces ToMe's `scatter_reduce`: Equal(dst, range(Nb)) is
a `[B, r, Nb]` assignment matrix, so sums over merged tokens are a MatMul with
its transpose. Only ops from the portable list are emitted.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from vtc.budget import Budget
from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import Block
from vtc.passes.unmerge import apply_unmerge, compose, destinations


def _merge(em: Emitter, blk: Block, x: ir.Value, size: ir.Value | None, n: int, r: int,
           p: int, track: bool) -> tuple[ir.Value, ir.Value, ir.Value | None]:
    """Emit one merge of x `[B, N, C]`; returns (x' `[B, N-r, C]`, s' `[B, N-r, 1]`,
    d `[B, N]` float: the slot in x' of every token of x, only when `track`)."""
    c = blk.width
    na, nb = (n - p + 1) // 2, (n - p) // 2
    # metric [B, N, D]: keys averaged over heads (Kᵀ is [B, H, D, N]).
    km = em.reduce("ReduceMean", blk.key_t, [1], 0)
    metric = em.op("Transpose", km, perm=[0, 2, 1])
    m = em.slice(metric, p, n, axis=1)
    m = em.op("Div", m, em.reduce("ReduceL2", m, [-1], 1))
    a = em.slice(m, 0, n - p, axis=1, step=2)
    b = em.slice(m, 1, n - p, axis=1, step=2)
    scores = em.op("MatMul", a, em.op("Transpose", b, perm=[0, 2, 1]))  # [B, Na, Nb]
    node_max = em.reduce("ReduceMax", scores, [-1], 0)  # [B, Na]
    node_idx = em.op("ArgMax", scores, axis=-1, keepdims=0, select_last_index=0)
    _, order = em.op("TopK", node_max, em.const([na]), outputs=2, axis=-1, largest=1, sorted=1)
    src = em.slice(order, 0, r, axis=1)  # [B, r]
    unm = em.sort_ascending(em.slice(order, r, na, axis=1), na - r)  # [B, Na-r]
    dst = em.op("GatherElements", node_idx, src, axis=1)  # [B, r]
    assign_t = em.op("Transpose", em.one_hot(dst, nb), perm=[0, 2, 1])  # [B, Nb, r]

    xp = em.slice(x, p, n, axis=1)
    xa = em.slice(xp, 0, n - p, axis=1, step=2)
    xb = em.slice(xp, 1, n - p, axis=1, step=2)
    if size is None:  # every size is 1
        num_b = em.op("Add", xb, em.op("MatMul", assign_t, em.gather_rows(xa, src, c)))
        size_b = em.op("Add", em.reduce("ReduceSum", assign_t, [2], 1),
                       em.const(1.0, np.float32))
        # unit sizes for the protected and unmerged tokens: [B, P+Na-r, 1]
        ones_src = em.slice(x, 0, p + na - r, axis=1)
        ones = em.op("Add", em.op("Mul", em.slice(ones_src, 0, 1, axis=2),
                                  em.const(0.0, np.float32)), em.const(1.0, np.float32))
        keep_sizes = [ones]
    else:
        sp = em.slice(size, p, n, axis=1)
        sa = em.slice(sp, 0, n - p, axis=1, step=2)
        sb = em.slice(sp, 1, n - p, axis=1, step=2)
        src_s = em.gather_rows(sa, src, 1)
        src_x = em.op("Mul", em.gather_rows(xa, src, c), src_s)
        num_b = em.op("Add", em.op("Mul", xb, sb), em.op("MatMul", assign_t, src_x))
        size_b = em.op("Add", sb, em.op("MatMul", assign_t, src_s))
        keep_sizes = ([em.slice(size, 0, p, axis=1)] if p else []) + [
            em.gather_rows(sa, unm, 1)
        ]
    xb_new = em.op("Div", num_b, size_b)
    parts = ([em.slice(x, 0, p, axis=1)] if p else []) + [em.gather_rows(xa, unm, c), xb_new]
    x_new = em.op("Concat", *parts, axis=1)
    s_new = em.op("Concat", *keep_sizes, size_b, axis=1)
    d = destinations(em, p, na, nb, r, src, unm, dst) if track else None
    return x_new, s_new, d


def _proportional_attention(em: Emitter, blk: Block, size: ir.Value) -> None:
    """logits[B, H, N, N] += log(s)[B, 1, 1, N] right before the Softmax."""
    logs = em.op("Log", em.op("Transpose", size, perm=[0, 2, 1]))  # [B, 1, N]
    bias = em.op("Unsqueeze", logs, em.const([1]))  # [B, 1, 1, N]
    logits = blk.softmax.inputs[0]
    assert logits is not None
    new_logits = em.op("Add", logits, bias)
    em.insert_before(blk.softmax)
    blk.softmax.replace_input_with(0, new_logits)


def apply_tome(model: ir.Model, blocks: list[Block], budget: Budget, unmerge: bool = False
               ) -> int:
    """Insert the merges the budget asks for; returns how many were inserted.
    With `unmerge`, the last block's output is copied back to all N tokens
    (see `vtc.passes.unmerge`). `compress` has checked that blocks and budget agree."""
    size: ir.Value | None = None
    total: ir.Value | None = None
    inserted = 0
    for blk, plan in zip(blocks, budget.layers, strict=True):
        if size is not None and budget.proportional_attention:
            _proportional_attention(Emitter(model.graph, f"vtc_tome{blk.index}_prop"), blk, size)
        if plan.op != "tome" or plan.r == 0:
            continue
        em = Emitter(model.graph, f"vtc_tome{blk.index}")
        x_new, size, d = _merge(em, blk, blk.x_mid, size, plan.tokens_in, plan.r,
                                budget.protected, unmerge)
        if d is not None:
            total = compose(em, total, d)
        new_nodes = list(em.nodes)
        em.insert_after(blk.attn_add)
        rewire(blk.x_mid, x_new, new_nodes)
        inserted += 1
    if unmerge and total is not None:
        apply_unmerge(model, blocks[-1], total)
    return inserted
