"""EViT: keep the k most attended tokens, fuse the rest (docs/algorithms.md).

Before (one block, N tokens)::

    x_in ─► LN ─► attn ─► Softmax ─► A[B,H,N,N] ─► … ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add

After (k kept at this block, P protected, one fused token)::

    A ─► Slice(row 0, cols P:) ─► ReduceMean(H) ─► score[B, N-P]   (P = 0: mean over H, queries)
    score ─► TopK(k) ─► sort ─► idx[B, k] ─► GatherElements ─► kept[B, k, C]
    score · (1 - one-hot-mask(idx)) ─► MatMul with x_mid[:, P:] ─► fused[B, 1, C]  (÷ Σw: "mean")
    x' = concat(x_mid[:, :P], kept, fused)[B, P+k+1, C] ─► LN ─► MLP ─► Add
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from vtc.budget import Budget
from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import Block


def _prune(em: Emitter, blk: Block, x: ir.Value, n: int, k: int, p: int, fuse: str) -> ir.Value:
    """Emit one prune of x `[B, N, C]`; returns x' `[B, P+k(+1), C]`."""
    c = blk.width
    probs = blk.probs
    if p > 0:
        row = em.op("Slice", probs, em.const([0, p]), em.const([1, n]), em.const([2, 3]))
        score = em.reduce("ReduceMean", row, [1, 2], 0)  # [B, N-P]
    else:
        score = em.reduce("ReduceMean", probs, [1, 2], 0)  # [B, N]
    _, top = em.op("TopK", score, em.const([k]), outputs=2, axis=-1, largest=1, sorted=1)
    idx = em.sort_ascending(top, k)
    xp = em.slice(x, p, n, axis=1)
    parts = ([em.slice(x, 0, p, axis=1)] if p else []) + [em.gather_rows(xp, idx, c)]
    if fuse != "none":
        mask = em.reduce("ReduceMax", em.one_hot(idx, n - p), [1], 0)  # [B, N-P]
        w = em.op("Mul", score, em.op("Sub", em.const(1.0, np.float32), mask))
        w3 = em.op("Unsqueeze", w, em.const([1]))  # [B, 1, N-P]
        fused = em.op("MatMul", w3, xp)  # [B, 1, C]
        if fuse == "mean":
            fused = em.op("Div", fused, em.reduce("ReduceSum", w3, [2], 1))
        parts.append(fused)
    return em.op("Concat", *parts, axis=1)


def apply_evit(model: ir.Model, blocks: list[Block], budget: Budget) -> int:
    """Insert the prunes the budget asks for; returns how many were inserted."""
    inserted = 0
    for blk, plan in zip(blocks, budget.layers, strict=True):
        if plan.op != "evit":
            continue
        em = Emitter(model.graph, f"vtc_evit{blk.index}")
        x_new = _prune(em, blk, blk.x_mid, plan.tokens_in, plan.keep, budget.protected,
                       budget.evit_fuse)
        new_nodes = list(em.nodes)
        em.insert_after(blk.attn_add)
        rewire(blk.x_mid, x_new, new_nodes)
        inserted += 1
    return inserted
