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

After, **gather** (r merges in this block; T = N − P candidates)::

    k ─► mean over heads ─► L2-normalise ─► slice P: ─► S = m·mᵀ [B,T,T]
    S ─► Sub(m_i) ─► Elu(α) ─► MatMul(1/T row) ─► energy[B,1,T] ─► TopK(T) ─► order
         order[:2r] ─► A = ranks 0,2,…  B = ranks 1,3,…        order[2r:] ─► kept (energy order)
    S ─► GatherND(A rows) ─► GatherElements(B cols) ─► ArgMax ─► dst[B,r,1]
    x_mid, s ─► GatherND A, B, kept ─► one-hot(dst) MatMul (weighted sums) ─► Div
    x'[B, N−r, C] = concat(protected, kept, B') ─► LN ─► MLP ─► Add

After, **compact** (per-token vectors are rows `[B, 1, N]` in the original order)::

    m[B,N,D] ─► S = m·mᵀ [B,N,N] ─► Sub(margin row) ─► Elu(α) ─► MatMul(mean row) ─► energy
         (protected token j: margin −(2²⁶ − 2²⁰·j), so they rank first, in position order)
    energy ─► TopK ─► order ─► Cast ─► TopK (inverse) ─► rank
         ranks P, P+2, … < P+2r: A;  P+1, P+3, …: B;  ≥ P+2r: kept (energy order)
    order[B ranks] ─► Expand ─► GatherElements(S rows) [B,r,N] ─► TopK(K=1) ─► dst
    slot = Where(A rank, slot_of_b[dst], slot_of_rank[rank])               [B,1,N]
    W = Equal(slot, rows) ─► Where(W, sᵀ, 0) ─► ÷ΣW ─► MatMul(·, x_mid) ─► x'

The same decisions either way (`vtc.budget.choose` picks per block; `pitome.formulation`
forces one; `pitome_tables` holds compact's constants).

High energy marks a token with many similar neighbours (a large cluster): the 2r
highest-energy tokens are the merge candidates, and every A candidate merges into
its most similar B candidate. Low-energy (isolated, informative) tokens are kept.

Beyond the portable op list the pass emits `Elu` (the energy's kernel): ONNX
Runtime runs it on every provider and TensorRT's ONNX parser maps it to its ELU
activation layer, so no plugin is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import field_validator

from vtc.budget import COMPACT, GATHER, Geometry, LayerPlan
from vtc.methods.base import Site, SiteOut
from vtc.methods.merging import (
    MergeConfig,
    MergeMethod,
    emit_best,
    emit_ranks,
    emit_slot_merge,
    emit_table,
    emit_unit_metric,
    emit_unit_metric_cols,
    emit_weighted_merge,
    gather_tokens,
    merge_macs,
    ones_like_sizes,
    slot_map,
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


@dataclass(frozen=True)
class PiToMeTables:
    """The constants of one PiToMe block (N tokens, P protected, T = N − P candidates).

    margin `[1, N]`: m_i at candidates; at protected token j −(2²⁶ − 2²⁰·j), so that its
    kernel column is S + 2²⁶ − 2²⁰·j = 2²⁶ − 2²⁰·j exactly (S ∈ [−1, 1], the ulp there is
    8) and the energies of the protected tokens, far above any candidate's, fall 2²⁰
    apart in position order — a gap no summation order's rounding (≤ 8 per term) closes,
    so every engine ranks them first, in position order (equal energies would leave
    their order to the rounding of each engine's MatMul).
    mean `[1, N]`: 1/T at candidates, 0 at protected tokens (energy = mean · kernel).
    is_a `[N]` bool over ranks: the A candidates (ranks P, P+2, …, P+2r−2; the B
    candidates are the odd ranks between). slot_of_rank `[N]` float: the slot of the
    token at each rank (the protected, then the kept candidates — ranks ≥ P+2r — in
    energy order). slot_of_b `[r]` float: the slot of the m-th B candidate, N − 2r + m.
    """

    margin: np.ndarray
    mean: np.ndarray
    is_a: np.ndarray
    slot_of_rank: np.ndarray
    slot_of_b: np.ndarray


PROTECTED_SHIFT, PROTECTED_STEP = 2.0 ** 26, 2.0 ** 20  # see PiToMeTables.margin


def pitome_tables(n: int, protected: int, r: int, margin: float) -> PiToMeTables:
    """`PiToMeTables` for N tokens, P protected, r merges and this block's margin."""
    p, t = protected, n - protected
    k = np.arange(n)
    cand = k >= p
    shift = -(PROTECTED_SHIFT - PROTECTED_STEP * k)  # protected: descending, 2²⁰ apart
    m_row = np.where(cand, margin, shift).astype(np.float32).reshape(1, n)
    mean = np.where(cand, 1.0 / t, 0.0).astype(np.float32).reshape(1, n)
    merging, odd = cand & (k < p + 2 * r), (k - p) % 2 == 1
    slot = np.where(cand, k - 2 * r, k)  # protected; kept (A ranks: never read)
    slot = np.where(merging & odd, n - 2 * r + (k - p) // 2, slot)  # B candidates
    return PiToMeTables(m_row, mean, merging & ~odd, slot.astype(np.float32),
                        (n - 2 * r + np.arange(r)).astype(np.float32))


def margin_at(m0: float, block: int, layers: int) -> float:
    """The reference schedule: m_i = m0 · (1 − i / L), block i of L (0-based)."""
    return m0 * (1.0 - block / layers)


@register
class PiToMe(MergeMethod):
    name = "pitome"
    config = PiToMeConfig
    recipe = "pitome-r8"
    extra_ops = frozenset({"Elu"})
    formulations = (GATHER, COMPACT)
    summary = ("energy-ordered merging: merge the 2r highest-energy tokens pairwise, keep the "
               "isolated ones")

    def block_params(self, cfg: MergeConfig, geo: Geometry, block: int) -> dict[str, object]:
        assert isinstance(cfg, PiToMeConfig)
        return {"margin": margin_at(cfg.margin, block, geo.layers), "alpha": cfg.alpha}

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        t = plan.tokens_in - geo.protected
        return t * t * (geo.width // max(geo.heads, 1) + 1)

    def work(self, plan: LayerPlan, geo: Geometry, formulation: str, sized: bool
             ) -> tuple[int, int]:
        """gather: T² similarities and energy (T²·(D + 1)), the one-hot sums (r·r·C);
        rows moved: the gathers, the B rows' arithmetic, the output. compact: N² of the
        same, the assignment MatMul (N'·N·C); the [B, N', N] matrix built four times."""
        n, n_out, c = plan.tokens_in, plan.tokens_out, geo.width
        d, r, t = c // max(geo.heads, 1), n - n_out, n - geo.protected
        if formulation == COMPACT:
            return (n * n * (d + 2) + merge_macs(n, n_out, c),
                    3 * n * d + 3 * n * n + r * n + 4 * n_out * n + n_out * c)
        return (t * t * (d + 1) + r * r * c,
                3 * n * d + 3 * t * t + r * t + c * (2 * r + r * (3 + sized) + n_out))

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        return (self._compact if site.formulation == COMPACT else self._gather)(site)

    def _gather(self, site: Site) -> SiteOut:
        em, x, size, p = site.em, site.x, site.size, site.protected
        n, r = site.plan.tokens_in, int(site.plan.params["r"])
        margin, alpha = float(site.plan.params["margin"]), float(site.plan.params["alpha"])
        t, k = n - p, n - p - 2 * r
        m = em.slice(emit_unit_metric(em, site.block, n), p, n, axis=1)  # [B, T, D]
        sim = em.op("MatMul", m, em.op("Transpose", m, perm=[0, 2, 1]))  # [B, T, T]
        kernel = em.op("Elu", em.op("Sub", sim, em.const(margin, np.float32)), alpha=alpha)
        # the row means as column means (S is symmetric, bit for bit): a MatMul sums each
        # column in one order, where ReduceMean over the last axis sums rows at different
        # alignments in different orders, so equal tokens could get unequal energies
        mean = em.const(np.full((1, t), 1.0 / t, dtype=np.float32), np.float32)
        energy = em.op("MatMul", mean, kernel)  # [B, 1, T]
        _, order = em.op("TopK", energy, em.const([t]), outputs=2, axis=-1, largest=1,
                         sorted=1)
        order = em.op("Reshape", order, em.const([0, -1, 1]))  # [B, T, 1]: by energy
        kept = em.slice(order, 2 * r, t, axis=1)  # [B, T-2r, 1], energy order
        a_idx = em.slice(order, 0, 2 * r, axis=1, step=2)  # [B, r, 1]
        b_idx = em.slice(order, 1, 2 * r, axis=1, step=2)  # [B, r, 1]
        rows = em.rows(sim, a_idx)  # [B, r, T]
        cols = em.op("Expand", em.op("Reshape", b_idx, em.const([0, 1, -1])),
                     em.const([1, r, 1]))
        scores = em.op("GatherElements", rows, cols, axis=2)  # [B, r, r]
        dst = em.op("ArgMax", scores, axis=-1, keepdims=1, select_last_index=0)  # [B, r, 1]
        a_at, b_at, kept_at = (em.op("Add", i, em.const(p)) if p else i
                               for i in (a_idx, b_idx, kept))  # token positions
        sizes = None if size is None else (em.rows(size, a_at), em.rows(size, b_at))
        xb_new, size_b = emit_weighted_merge(em, em.rows(x, a_at), em.rows(x, b_at), dst, r,
                                             sizes)
        front = [em.slice(x, 0, p, axis=1)] if p else []
        x_new = em.op("Concat", *front, em.rows(x, kept_at), xb_new, axis=1)
        if size is None:
            keep_sizes = [unit_sizes(em, x, p + k)]
        else:
            keep_sizes = ([em.slice(size, 0, p, axis=1)] if p else []) + [
                em.rows(size, kept_at)]
        out = SiteOut(x_new, em.op("Concat", *keep_sizes, size_b, axis=1))
        if site.track:
            flat = [em.op("Reshape", v, em.const([0, -1])) for v in (kept, a_idx, b_idx, dst)]
            out.slots = self._slots(em, p, t, k, r, *flat)
        return out

    def _compact(self, site: Site) -> SiteOut:
        em, p = site.em, site.protected
        n, r = site.plan.tokens_in, int(site.plan.params["r"])
        margin, alpha = float(site.plan.params["margin"]), float(site.plan.params["alpha"])
        tab = pitome_tables(n, p, r, margin)
        m = emit_unit_metric_cols(em, site.block)  # [B, D, N]
        sim = em.op("MatMul", em.op("Transpose", m, perm=[0, 2, 1]), m)  # [B, N, N]
        kernel = em.op("Elu", em.op("Sub", sim, em.const(tab.margin, np.float32)), alpha=alpha)
        energy = em.op("MatMul", em.const(tab.mean, np.float32), kernel)  # [B, 1, N]
        order, rank = emit_ranks(em, energy, n)  # [B, 1, N]: protected first, then by energy
        # the B candidates' rows of the similarities, in rank order: [B, r, N]
        b_rows = em.op("Reshape", em.slice(order, p + 1, p + 2 * r, axis=2, step=2),
                       em.const([0, -1, 1]))  # [B, r, 1]
        b_sim = em.op("GatherElements", sim, em.op("Expand", b_rows, em.const([1, 1, n])),
                      axis=1)
        _, dst = emit_best(em, b_sim)  # [B, 1, N]: each token's best B (ties: lower rank)
        slot = em.op("Where", emit_table(em, tab.is_a, rank),
                     emit_table(em, tab.slot_of_b, dst),
                     emit_table(em, tab.slot_of_rank, rank))  # [B, 1, N]
        x, size = emit_slot_merge(em, site.x, site.size, slot, n - r)
        return SiteOut(x, size, slot_map(em, slot) if site.track else None)

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
