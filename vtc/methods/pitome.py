"""PiToMe: spectrum-preserving token merging by energy score (Tran et al., NeurIPS 2024;
docs/algorithms.md), as the reference code's `pitome()` does it (hchautran/PiToMe,
`algo/pitome/merge.py` and `patch/timm.py` at 01b65c37), with a static r per block.

Recipe section::

    pitome:
      r: 16                      # or a list, one per block; or flops_ratio: 1.6
      margin: 0.9                # m0: block i of L uses m_i = m0 · (1 − i / L)
      alpha: 1.0                 # the ELU's α below the margin
      proportional_attention: true
      layers: null

Before (one block, N tokens, P protected)::

    x_in ─► LN ─► attn(K) ─► proj ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add ─► x_out

After (r merges in this block; T = N − P candidates)::

    Kᵀ[B,H,D,N] ─► ReduceMean(H) ─► slice P: ─► L2-normalise ─► S = m·mᵀ [B,T,T]
    S ─► Sub(m_i) ─► Elu(α) ─► ReduceMean ─► energy[B,T] ─► TopK(T) ─► order
         order[:2r] ─► A = ranks 0,2,…  B = ranks 1,3,…        order[2r:] ─► kept (energy order)
    S ─► GatherElements(A rows, B cols) ─► ArgMax ─► dst[B,r]
    x_mid, s ─► gather A, B, kept ─► one-hot(dst) MatMul (weighted sums) ─► Div
    x'[B, N−r, C] = concat(protected, kept, B') ─► LN ─► MLP ─► Add

High energy marks a token with many similar neighbours (a large cluster): the 2r
highest-energy tokens are the merge candidates, and every A candidate merges into
its most similar B candidate. Low-energy (isolated, informative) tokens are kept.

Beyond the portable op list the pass emits `Elu` (the energy's kernel): ONNX
Runtime runs it on every provider and TensorRT's ONNX parser maps it to its ELU
activation layer, so no plugin is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import field_validator

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


class PiToMeConfig(MergeConfig):
    margin: float = 0.9  # m0 of the margin schedule m_i = m0 · (1 − i / L)
    alpha: float = 1.0

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: float) -> float:
        if not -1.0 <= v < 1.0:  # also refuses NaN
            raise ValueError(f"margin={v} is outside [-1, 1): it is compared with cosine "
                             "similarities; the paper's default is 0.9")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not -10.0 <= v <= 10.0:  # also refuses NaN and infinities
            raise ValueError(f"alpha={v} is outside [-10, 10]: a finite scale of the ELU below "
                             "the margin (the paper uses 1.0; its ablation tries -1 to 1)")
        return v


def margin_at(m0: float, block: int, layers: int) -> float:
    """The reference schedule: m_i = m0 · (1 − i / L), block i of L (0-based)."""
    return m0 * (1.0 - block / layers)


@register
class PiToMe(MergeMethod):
    name = "pitome"
    config = PiToMeConfig
    recipe = "pitome-r8"
    extra_ops = frozenset({"Elu"})
    summary = ("energy-ordered merging: merge the 2r highest-energy tokens pairwise, keep the "
               "isolated ones")

    def block_params(self, cfg: MergeConfig, geo: Geometry, block: int) -> dict[str, object]:
        assert isinstance(cfg, PiToMeConfig)
        return {"margin": margin_at(cfg.margin, block, geo.layers), "alpha": cfg.alpha}

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        t = plan.tokens_in - geo.protected
        return t * t * (geo.width // max(geo.heads, 1) + 1)

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        em, blk, x, size, p = site.em, site.block, site.x, site.size, site.protected
        n, r = site.plan.tokens_in, int(site.plan.params["r"])
        margin, alpha = float(site.plan.params["margin"]), float(site.plan.params["alpha"])
        t, c, k = n - p, blk.width, n - p - 2 * r
        metric = em.op("Transpose", em.reduce("ReduceMean", blk.key_t, [1], 0), perm=[0, 2, 1])
        m = em.slice(metric, p, n, axis=1)
        m = em.op("Div", m, em.reduce("ReduceL2", m, [-1], 1))
        sim = em.op("MatMul", m, em.op("Transpose", m, perm=[0, 2, 1]))  # [B, T, T]
        shifted = em.op("Sub", sim, em.const(margin, np.float32))
        energy = em.reduce("ReduceMean", em.op("Elu", shifted, alpha=alpha), [-1], 0)  # [B, T]
        _, order = em.op("TopK", energy, em.const([t]), outputs=2, axis=-1, largest=1, sorted=1)
        kept = em.slice(order, 2 * r, t, axis=1)  # [B, T-2r], energy order
        a_idx = em.slice(order, 0, 2 * r, axis=1, step=2)  # [B, r]
        b_idx = em.slice(order, 1, 2 * r, axis=1, step=2)  # [B, r]
        rows = em.gather_rows(sim, a_idx, t)  # [B, r, T]
        cols = em.op("Expand", em.op("Unsqueeze", b_idx, em.const([1])), em.const([1, r, 1]))
        scores = em.op("GatherElements", rows, cols, axis=2)  # [B, r, r]
        dst = em.op("ArgMax", scores, axis=-1, keepdims=0, select_last_index=0)  # [B, r]

        xc = em.slice(x, p, n, axis=1)
        xa, xb = em.gather_rows(xc, a_idx, c), em.gather_rows(xc, b_idx, c)
        if size is None:
            xb_new, size_b = emit_weighted_merge(em, xa, None, xb, None, dst, r)
            keep_sizes = [unit_sizes(em, em.slice(x, 0, p + k, axis=1))]
        else:
            sc = em.slice(size, p, n, axis=1)
            xb_new, size_b = emit_weighted_merge(em, xa, em.gather_rows(sc, a_idx, 1), xb,
                                                 em.gather_rows(sc, b_idx, 1), dst, r)
            keep_sizes = ([em.slice(size, 0, p, axis=1)] if p else []) + [
                em.gather_rows(sc, kept, 1)]
        front = [em.slice(x, 0, p, axis=1)] if p else []
        x_new = em.op("Concat", *front, em.gather_rows(xc, kept, c), xb_new, axis=1)
        out = SiteOut(x_new, em.op("Concat", *keep_sizes, size_b, axis=1))
        if site.track:
            out.slots = self._slots(em, p, t, k, r, kept, a_idx, b_idx, dst)
        return out

    @staticmethod
    def _slots(em: Emitter, p: int, t: int, k: int, r: int, kept: ir.Value, a_idx: ir.Value,
               b_idx: ir.Value, dst: ir.Value) -> ir.Value:
        """Output: [protected, kept (k), B' (r)]; A token j lands on B token dst[j]."""
        import onnx_ir as ir

        from vtc.passes.unmerge import ramp, slots

        pos = em.op("Concat", kept, b_idx, a_idx, axis=1)  # [B, T]: every candidate once
        dst_slot = em.op("Add", em.op("Cast", dst, to=ir.DataType.FLOAT),
                         em.const(float(p + k), np.float32))
        val = em.op("Concat", ramp(em, kept, p, k), ramp(em, b_idx, p + k, r), dst_slot, axis=1)
        return slots(em, p, pos, val, t)

    # ---- torch ------------------------------------------------------------------------
    def eager(self, x: Tensor, sizes: Tensor | None, keys: Tensor, probs: Tensor,
              plan: LayerPlan, protected: int) -> tuple[Tensor, Tensor | None]:
        return pitome_merge(x, ones_like_sizes(x) if sizes is None else sizes, keys.mean(dim=1),
                            int(plan.params["r"]), protected, float(plan.params["margin"]),
                            float(plan.params["alpha"]))


def energy_order(metric: Tensor, margin: float, alpha: float) -> tuple[Tensor, Tensor]:
    """metric `[B, T, D]` → (cosine similarities `[B, T, T]`, token indices `[B, T]` by
    energy `mean_j ELU(S_ij − margin; α)`, highest first, ties to the lower index)."""
    import torch
    import torch.nn.functional as F

    m = metric / metric.norm(dim=-1, keepdim=True)
    sim = m @ m.transpose(-1, -2)
    energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)
    return sim, torch.sort(energy, dim=-1, descending=True, stable=True).indices


def pitome_merge(x: Tensor, sizes: Tensor, metric: Tensor, r: int, protected: int,
                 margin: float, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """One PiToMe merge of the unprotected tokens.

    Args:
        x: tokens `[B, N, C]`; sizes `[B, N, 1]`.
        metric: the block's keys averaged over heads, `[B, N, D]`.
        r: tokens to remove, `0 <= 2r <= N - protected`.
        protected: leading tokens that take no part and stay in front.
        margin: this block's margin m_i; alpha: the ELU's α.

    Returns:
        `(x' [B, N-r, C], sizes' [B, N-r, 1])`: `concat(protected, kept tokens in energy
        order, the B candidates after the size-weighted merge, in rank order)`.
    """
    import torch

    n = x.shape[1]
    t = n - protected
    if not 0 <= 2 * r <= t:
        raise ValueError(f"PiToMe r={r} is outside 0..{t // 2} for {n} tokens")
    if r == 0:
        return x, sizes
    sim, order = energy_order(metric[:, protected:], margin, alpha)
    a_idx, b_idx, kept = order[:, 0:2 * r:2], order[:, 1:2 * r:2], order[:, 2 * r:]
    rows = sim.gather(1, a_idx.unsqueeze(-1).expand(-1, -1, t))  # [B, r, T]
    dst = rows.gather(2, b_idx.unsqueeze(1).expand(-1, r, -1)).argmax(dim=-1)  # [B, r]
    body, body_s = x[:, protected:], sizes[:, protected:]
    xb_new, size_b = weighted_merge(gather_tokens(body, a_idx), gather_tokens(body_s, a_idx),
                                    gather_tokens(body, b_idx), gather_tokens(body_s, b_idx),
                                    dst)
    x_out = torch.cat([x[:, :protected], gather_tokens(body, kept), xb_new], dim=1)
    s_out = torch.cat([sizes[:, :protected], gather_tokens(body_s, kept), size_b], dim=1)
    return x_out, s_out
