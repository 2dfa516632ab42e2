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

After, **gather** (r merges in this block; sizes s travel beside the stream)::

    x_in ─► LN ─► attn(K, logits + log s) ─► proj ─► Add ─► x_mid[B,N,C]
      k ─► mean over heads ─► L2-normalise ─► m[B,N,D] ─► split a/b ─► MatMul ─► TopK(1)
                                                        └► TopK ─► src, unm (ascending), dst
      x_mid, s ─► GatherND(src, unm), Slice(b) ─► one-hot(dst) MatMul (weighted sums) ─► Div
                                ▼
      x'[B, N-r, C] = concat(protected, a[unm], b') ─► LN ─► MLP ─► Add

After, **compact** (every per-token vector a row `[B, 1, N]` in the original order)::

      m[B,N,D] ─► S = m·mᵀ [B,N,N] ─► Where(B row × A column, S, −10) ─► TopK(K=1, axis 1)
                                                              ─► node_max, node_idx
      node_max ─► TopK ─► Cast ─► TopK (inverse) ─► rank  (rank < r: merged away)
      kept = table[rank] ─► MatMul(count) ─► slot of each kept token
      slot = Where(rank < r, slot_of[node_idx], kept slot)               [B, 1, N]
      W = Equal(slot, rows[1,N',1]) ─► Where(W, sᵀ, 0) ─► ÷ΣW ─► MatMul(·, x_mid) ─► x'

The same decisions either way (one metric value feeds both); gather costs few MACs and
~40 nodes, compact ~20 nodes and N'·N·C MACs (`vtc.budget.choose` picks per block;
`tome.formulation` forces one). The constants of compact (mask, rank tables, the count
matrix, the B slots) are `tome_tables`.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from vtc.budget import COMPACT, GATHER, Geometry, LayerPlan
from vtc.methods.base import Site, SiteOut
from vtc.methods.merging import (
    MASKED,
    MergeConfig,
    MergeMethod,
    emit_best,
    emit_best_col,
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


@dataclass(frozen=True)
class ToMeTables:
    """The constants of one compact ToMe block, over token positions 0..N-1.

    mask `[N, N]` bool: (B row, A column) pairs, the only scores that count.
    kept `[N]` float, indexed by rank: 0.0 for the r best-matched A tokens, else 1.0.
    count `[N, N]`: kept `[1, N]` · count = the slot of every token that stays — the
    protected in front, the unmerged A tokens in ascending position, then the B tokens
    (row `carrier`, a B token, which always stays, holds each column's constant part;
    A rows count the kept A tokens before each A column).
    slot_of `[N]` float: the slot of each B token (where an A token merging into it goes).
    """

    mask: np.ndarray
    kept: np.ndarray
    count: np.ndarray
    slot_of: np.ndarray


def tome_tables(n: int, protected: int, r: int, first: int) -> ToMeTables:
    """`ToMeTables` for N tokens, P protected, r merges and the split `first`."""
    p = protected
    a0, na, b0, nb = sets(n - p, first)
    a_pos, b_pos = p + a0 + 2 * np.arange(na), p + b0 + 2 * np.arange(nb)
    mask = np.zeros((n, n), dtype=bool)
    mask[np.ix_(b_pos, a_pos)] = True
    kept = (np.arange(n) >= r).astype(np.float32)
    slot_of = np.zeros(n, dtype=np.float32)
    slot_of[b_pos] = p + na - r + np.arange(nb)
    count = np.zeros((n, n), dtype=np.float32)
    count[np.ix_(a_pos, a_pos)] = np.triu(np.ones((na, na), dtype=np.float32), k=1)
    carrier = b_pos[0]
    count[carrier, :p] = np.arange(p)
    count[carrier, a_pos] = p
    count[carrier, b_pos] = slot_of[b_pos]
    return ToMeTables(mask, kept, count, slot_of)


@register
class ToMe(MergeMethod):
    name = "tome"
    config = ToMeConfig
    recipe = "tome-r8"
    summary = "bipartite soft matching: merge the r most similar A→B pairs per block"
    formulations = (GATHER, COMPACT)

    def block_params(self, cfg: MergeConfig, geo: Geometry, block: int) -> dict[str, object]:
        assert isinstance(cfg, ToMeConfig)
        return {"first": first_set(geo.protected, cfg.protected), "protected": cfg.protected}

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        t = plan.tokens_in - geo.protected
        return (t // 2) * ((t + 1) // 2) * (geo.width // max(geo.heads, 1))

    def work(self, plan: LayerPlan, geo: Geometry, formulation: str, sized: bool
             ) -> tuple[int, int]:
        """gather: the A×B similarities (Na·Nb·D) and the one-hot sums (Nb·r·C); rows
        moved: the gathers, the B rows' arithmetic, the output. compact: all N² pairs
        (N²·D), the slot count (N²) and the assignment MatMul (N'·N·C); elements: the
        [B, N', N] matrix built four times, the output."""
        n, n_out, c = plan.tokens_in, plan.tokens_out, geo.width
        d, r = c // max(geo.heads, 1), n - n_out
        metric = 3 * n * d
        if formulation == COMPACT:
            return (n * n * (d + 1) + merge_macs(n, n_out, c),
                    metric + n * n + 4 * n_out * n + n_out * c)
        t = n - geo.protected
        na, nb = (t + 1) // 2, t // 2
        return (na * nb * d + nb * r * c,
                metric + na * nb + c * (na + nb * (3 + sized) + n_out))

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        return (self._compact if site.formulation == COMPACT else self._gather)(site)

    def _gather(self, site: Site) -> SiteOut:
        em, x, size, p = site.em, site.x, site.size, site.protected
        n, r, first = site.plan.tokens_in, int(site.plan.params["r"]), \
            int(site.plan.params["first"])
        t = n - p
        a0, na, b0, nb = sets(t, first)
        m = emit_unit_metric(em, site.block, n)  # [B, N, D]
        a, b = em.slice(m, p + a0, n, axis=1, step=2), em.slice(m, p + b0, n, axis=1, step=2)
        scores = em.op("MatMul", a, em.op("Transpose", b, perm=[0, 2, 1]))  # [B, Na, Nb]
        node_max, node_idx = emit_best_col(em, scores)  # [B, Na, 1] each
        _, order = em.op("TopK", node_max, em.const([na]), outputs=2, axis=1, largest=1,
                         sorted=1)  # [B, Na, 1]: A tokens, best matched first
        src = em.slice(order, 0, r, axis=1)  # [B, r, 1]
        unm = em.sort_ascending(em.slice(order, r, na, axis=1), na - r, axis=1)
        dst = em.op("GatherElements", node_idx, src, axis=1)  # [B, r, 1]: B-local
        src_at, unm_at = (em.op("Add", em.op("Mul", i, em.const(2)), em.const(p + a0))
                          for i in (src, unm))  # A-local → token positions
        xb = em.slice(x, p + b0, n, axis=1, step=2)
        xs, sizes = em.rows(x, src_at), None
        if size is not None:
            sizes = em.rows(size, src_at), em.slice(size, p + b0, n, axis=1, step=2)
        xb_new, size_b = emit_weighted_merge(em, xs, xb, dst, nb, sizes)
        front = [em.slice(x, 0, p, axis=1)] if p else []
        x_new = em.op("Concat", *front, em.rows(x, unm_at), xb_new, axis=1)
        if size is None:  # every size is 1
            keep_sizes = [unit_sizes(em, x, p + na - r)]
        else:
            keep_sizes = ([em.slice(size, 0, p, axis=1)] if p else []) + [em.rows(size, unm_at)]
        out = SiteOut(x_new, em.op("Concat", *keep_sizes, size_b, axis=1))
        if site.track:
            flat = [em.op("Reshape", v, em.const([0, -1])) for v in (src, unm, dst)]
            out.slots = self._slots(em, p, t, a0, na, b0, nb, r, *flat)
        return out

    def _compact(self, site: Site) -> SiteOut:
        em, p = site.em, site.protected
        n, r, first = site.plan.tokens_in, int(site.plan.params["r"]), \
            int(site.plan.params["first"])
        tab = tome_tables(n, p, r, first)
        m = emit_unit_metric_cols(em, site.block)  # [B, D, N]
        sim = em.op("MatMul", em.op("Transpose", m, perm=[0, 2, 1]), m)  # [B, N, N]
        scores = em.op("Where", em.const(tab.mask, np.bool_), sim,
                       em.const(MASKED, np.float32))  # B rows × A columns, else MASKED
        node_max, node_idx = emit_best(em, scores)  # [B, 1, N]: best B of each A token
        _, rank = emit_ranks(em, node_max, n)  # non-A tokens rank after every A token
        kept = emit_table(em, tab.kept, rank)  # [B, 1, N] 1.0: not merged away
        keep_slot = em.op("MatMul", kept, em.const(tab.count, np.float32))
        slot = em.op("Where", emit_table(em, ~tab.kept.astype(bool), rank),
                     emit_table(em, tab.slot_of, node_idx), keep_slot)  # [B, 1, N]
        x, size = emit_slot_merge(em, site.x, site.size, slot, n - r)
        return SiteOut(x, size, slot_map(em, slot) if site.track else None)

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
