"""ToMe: bipartite soft matching with a static r per block (Bolya et al., ICLR 2023;
docs/algorithms.md). The split is the reference code's by default.

Recipe section::

    tome:
      r: 16                      # or a list, one per block; or flops_ratio: 1.8
      protected: inside          # inside (the ToMe code's split) | outside
      proportional_attention: true
      layers: null               # blocks it acts in (null: all)

Before (one block, N tokens)::

    x_in ─► LN ─► attn(K) ─► proj ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add ─► x_out

After (r merges in this block; sizes s travel beside the stream)::

    x_in ─► LN ─► attn(K, logits + log s) ─► proj ─► Add ─► x_mid[B,N,C]
      Kᵀ[B,H,D,N] ─► ReduceMean(H) ─► L2-normalise ─► split a/b ─► MatMul ─► ReduceMax/ArgMax
                                                                 └► TopK ─► src, unm, dst
      x_mid, s ─► GatherElements(src, unm) ─► one-hot(dst) MatMul (weighted sums) ─► Div
                                ▼
      x'[B, N-r, C] = concat(protected, a[unm], b') ─► LN ─► MLP ─► Add

The split. The candidates are the tokens after the P protected ones; A and B
alternate over them. `inside` (default) follows the ToMe code, where the
protected tokens keep their places in the alternation of the whole sequence
(A = even positions, B = odd; a protected token in A gets a −∞ score row, one in
B a −∞ column): the first candidate, at position P, is in A when P is even and
in B when P is odd. `outside` starts the alternation at the first candidate
whatever P is (vtc's earlier variant). They differ only for odd P (one CLS:
ViT, CLIP, DINOv2). Either way the protected tokens stay in front in the
output, as the ToMe code's output order has them for a CLS and a distillation
token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from vtc.budget import Geometry, LayerPlan
from vtc.methods.base import Site, SiteOut
from vtc.methods.merging import (
    MergeConfig,
    MergeMethod,
    emit_weighted_merge,
    gather_tokens,
    ones_like_sizes,
    unit_sizes,
    weighted_merge,
)
from vtc.methods.registry import register

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import Tensor

    from vtc.passes.emit import Emitter


class ToMeConfig(MergeConfig):
    # inside: the ToMe code's bipartite split; outside: protected tokens taken out first
    protected: Literal["inside", "outside"] = "inside"


def first_set(protected: int, mode: str) -> int:
    """0 when the first candidate token (position P) is in set A, 1 when it is in B."""
    return protected % 2 if mode == "inside" else 0


def sets(t: int, first: int) -> tuple[int, int, int, int]:
    """(a_start, na, b_start, nb): A = candidates[a_start::2], B = candidates[b_start::2]."""
    a0, b0 = first, 1 - first
    return a0, (t - a0 + 1) // 2, b0, (t - b0 + 1) // 2


@register
class ToMe(MergeMethod):
    name = "tome"
    config = ToMeConfig
    recipe = "tome-r8"
    summary = "bipartite soft matching: merge the r most similar A→B pairs per block"

    def block_params(self, cfg: MergeConfig, geo: Geometry, block: int) -> dict[str, object]:
        assert isinstance(cfg, ToMeConfig)
        return {"first": first_set(geo.protected, cfg.protected), "protected": cfg.protected}

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        t = plan.tokens_in - geo.protected
        return (t // 2) * ((t + 1) // 2) * (geo.width // max(geo.heads, 1))

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        em, blk, x, size, p = site.em, site.block, site.x, site.size, site.protected
        n, r, first = site.plan.tokens_in, int(site.plan.params["r"]), \
            int(site.plan.params["first"])
        t, c = n - p, blk.width
        a0, na, b0, nb = sets(t, first)
        # metric [B, N, D]: keys averaged over heads (Kᵀ is [B, H, D, N]).
        metric = em.op("Transpose", em.reduce("ReduceMean", blk.key_t, [1], 0), perm=[0, 2, 1])
        m = em.slice(metric, p, n, axis=1)
        m = em.op("Div", m, em.reduce("ReduceL2", m, [-1], 1))
        a, b = em.slice(m, a0, t, axis=1, step=2), em.slice(m, b0, t, axis=1, step=2)
        scores = em.op("MatMul", a, em.op("Transpose", b, perm=[0, 2, 1]))  # [B, Na, Nb]
        node_max = em.reduce("ReduceMax", scores, [-1], 0)  # [B, Na]
        node_idx = em.op("ArgMax", scores, axis=-1, keepdims=0, select_last_index=0)
        _, order = em.op("TopK", node_max, em.const([na]), outputs=2, axis=-1, largest=1,
                         sorted=1)
        src = em.slice(order, 0, r, axis=1)  # [B, r]
        unm = em.sort_ascending(em.slice(order, r, na, axis=1), na - r)  # [B, Na-r]
        dst = em.op("GatherElements", node_idx, src, axis=1)  # [B, r]

        xp = em.slice(x, p, n, axis=1)
        xa, xb = em.slice(xp, a0, t, axis=1, step=2), em.slice(xp, b0, t, axis=1, step=2)
        if size is None:  # every size is 1
            xb_new, size_b = emit_weighted_merge(em, em.gather_rows(xa, src, c), None, xb,
                                                 None, dst, nb)
            keep_sizes = [unit_sizes(em, em.slice(x, 0, p + na - r, axis=1))]
        else:
            sp = em.slice(size, p, n, axis=1)
            sa, sb = em.slice(sp, a0, t, axis=1, step=2), em.slice(sp, b0, t, axis=1, step=2)
            xb_new, size_b = emit_weighted_merge(em, em.gather_rows(xa, src, c),
                                                 em.gather_rows(sa, src, 1), xb, sb, dst, nb)
            keep_sizes = ([em.slice(size, 0, p, axis=1)] if p else []) + [
                em.gather_rows(sa, unm, 1)]
        front = [em.slice(x, 0, p, axis=1)] if p else []
        x_new = em.op("Concat", *front, em.gather_rows(xa, unm, c), xb_new, axis=1)
        s_new = em.op("Concat", *keep_sizes, size_b, axis=1)
        out = SiteOut(x_new, s_new)
        if site.track:
            out.slots = self._slots(em, p, t, a0, na, b0, nb, r, src, unm, dst)
        return out

    @staticmethod
    def _slots(em: Emitter, p: int, t: int, a0: int, na: int, b0: int, nb: int, r: int,
               src: ir.Value, unm: ir.Value, dst: ir.Value) -> ir.Value:
        """Output: [protected, a[unm] (ascending), b']; a-token j sits at candidate
        position a0 + 2j, b-token j at b0 + 2j."""
        import onnx_ir as ir

        from vtc.passes.unmerge import ramp, slots

        two = em.const(2)

        def position(idx: ir.Value, start: int) -> ir.Value:
            return em.op("Add", em.op("Mul", idx, two), em.const(start))

        pos = em.op("Concat", position(unm, a0), position(src, a0),
                    ramp(em, src, b0, nb, step=2, dtype=np.int64), axis=1)
        dst_slot = em.op("Add", em.op("Cast", dst, to=ir.DataType.FLOAT),
                         em.const(float(p + na - r), np.float32))
        val = em.op("Concat", ramp(em, src, p, na - r), dst_slot,
                    ramp(em, src, p + na - r, nb), axis=1)
        return slots(em, p, pos, val, t)

    # ---- torch ------------------------------------------------------------------------
    def eager(self, x: Tensor, sizes: Tensor | None, keys: Tensor, probs: Tensor,
              plan: LayerPlan, protected: int) -> tuple[Tensor, Tensor | None]:
        return tome_merge(x, ones_like_sizes(x) if sizes is None else sizes, keys.mean(dim=1),
                          int(plan.params["r"]), protected, int(plan.params["first"]))


def tome_merge(x: Tensor, sizes: Tensor, metric: Tensor, r: int, protected: int,
               first: int = 0) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching (ToMe) of the unprotected tokens.

    Args:
        x: tokens `[B, N, C]`.
        sizes: how many original tokens each token stands for, `[B, N, 1]`.
        metric: the matching metric `[B, N, D]` (the block's keys averaged over heads).
        r: tokens to remove, `0 <= r <= (N - protected) // 2`.
        protected: leading tokens that take no part and stay in front.
        first: 0 when the first candidate is in set A, 1 when it is in B (`first_set`).

    Returns:
        `(x', sizes')` of shapes `[B, N - r, C]` and `[B, N - r, 1]`:
        `concat(protected, unmerged A tokens (ascending), size-weighted B tokens)`.
    """
    import torch

    n = x.shape[1]
    t = n - protected
    if not 0 <= r <= t // 2:
        raise ValueError(f"ToMe r={r} is outside 0..{t // 2} for {n} tokens")
    if r == 0:
        return x, sizes
    a0, _, b0, _ = sets(t, first)
    m = metric[:, protected:]
    m = m / m.norm(dim=-1, keepdim=True)
    scores = m[:, a0::2] @ m[:, b0::2].transpose(-1, -2)  # [B, Na, Nb]
    node_idx = scores.argmax(dim=-1)  # ties -> lowest index  [B, Na]
    node_max = scores.gather(-1, node_idx.unsqueeze(-1)).squeeze(-1)
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    src, unm = order[:, :r], torch.sort(order[:, r:], dim=-1).values
    dst = node_idx.gather(-1, src)
    body, body_s = x[:, protected:], sizes[:, protected:]
    xa, xb, sa, sb = body[:, a0::2], body[:, b0::2], body_s[:, a0::2], body_s[:, b0::2]
    xb_new, size_b = weighted_merge(gather_tokens(xa, src), gather_tokens(sa, src), xb, sb, dst)
    x_out = torch.cat([x[:, :protected], gather_tokens(xa, unm), xb_new], dim=1)
    s_out = torch.cat([sizes[:, :protected], gather_tokens(sa, unm), size_b], dim=1)
    return x_out, s_out
