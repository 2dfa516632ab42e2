"""EViT: keep the k most attended tokens, fuse the rest (Liang et al., ICLR 2022;
docs/algorithms.md).

Recipe section::

    evit:
      keep_rate: 0.7             # or keep: 50 (absolute k per pruning block)
      layers: [3, 6, 9]          # the pruning blocks
      fuse: sum                  # sum | mean | none
      score: cls                 # cls | mean: how tokens are ranked (below)

Scores: ``cls`` ranks the unprotected tokens by the attention the first (CLS) token
pays them, averaged over heads (the paper's); ``mean`` ranks them by the attention
they receive, averaged over heads and every query (for models without a CLS token).
``cls`` on a model with no protected token is refused: the recipe must say
``score: mean``, so the report never hides which score ranked the tokens.

Before (one block, N tokens)::

    x_in ─► LN ─► attn ─► Softmax ─► A[B,H,N,N] ─► … ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add

After (k kept at this block, P protected, one fused token; per-token vectors are rows
`[B, 1, N]` in the original token order)::

    A ─► Slice(row 0) ─► ReduceMean(H) ─► score[B,1,N]                    (score: cls)
    A ─► ReduceMean(H, queries) ─► Unsqueeze ─► score[B,1,N]              (score: mean)
    score ─► Where(protected, 2, score) ─► TopK ─► Cast ─► TopK (inverse) ─► rank
    kept = rank < P + k;  slot = Where(kept, kept · before, P + k)   (before[i, j] = i < j)
    W = Equal(slot, rows[1,N',1]) ─► Where(W, Where(kept, 1, score), 0)  (÷ ΣW: "mean")
    x' = W · x_mid [B, P+k+1, C]: protected, kept (position order), fused Σ score_j x_j
    x' ─► LN ─► MLP ─► Add

14 nodes (fuse: sum), 16 (mean); 3 more with sizes. Kept tokens are copied bit for bit
(weight 1); the fused row is the MatMul's weighted sum.

After a merge method (a chained recipe) tokens carry sizes: kept tokens keep theirs
and the fused token's size is the sum of the dropped tokens' sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir
import torch
from pydantic import field_validator, model_validator
from torch import Tensor

from vtc.budget import BudgetError, Geometry, LayerPlan
from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteOut
from vtc.methods.merging import emit_ranks, emit_table, gather_tokens, merge_macs
from vtc.methods.registry import register

Fuse = Literal["sum", "mean", "none"]
Score = Literal["cls", "mean"]


class EViTConfig(MethodConfig):
    keep_rate: float | None = 0.7
    keep: int | None = None  # absolute k per pruning block (set keep_rate: null)
    layers: list[int] | None = [3, 6, 9]  # noqa: RUF012 - pydantic copies defaults
    fuse: Fuse = "sum"
    score: Score = "cls"  # cls: attention from the CLS token; mean: attention received

    @field_validator("keep_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:  # also refuses NaN
            raise ValueError(f"keep_rate={v} is outside (0, 1]; use e.g. 0.7")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"keep={v} must be >= 1")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> EViTConfig:
        if (self.keep_rate is None) == (self.keep is None):
            raise ValueError("give exactly one of keep_rate and keep (set the other to null)")
        return self


PROTECTED_SCORE = 2.0  # above any attention probability: the protected tokens rank first


@dataclass(frozen=True)
class EViTTables:
    """The constants of one EViT block (N tokens, P protected, k kept).

    protected `[N]` bool. kept_b / kept_f `[N]` over ranks: rank < P + k (bool / float).
    before `[N, N]`: `[i < j]`, so kept · before counts the kept tokens before each one
    (its slot: the protected, then the kept in position order). drop_slot: where a
    dropped token goes, the fused row P + k (−1 for fuse: none, no row). rows
    `[1, N', 1]`: the output rows 0..N'−1.
    """

    protected: np.ndarray
    kept_b: np.ndarray
    kept_f: np.ndarray
    before: np.ndarray
    drop_slot: float
    rows: np.ndarray


def evit_tables(n: int, protected: int, k: int, fuse: str) -> EViTTables:
    """`EViTTables` for N tokens, P protected, k kept and the fuse mode."""
    kept = np.arange(n) < protected + k
    n_out = protected + k + (0 if fuse == "none" else 1)
    return EViTTables(np.arange(n) < protected, kept, kept.astype(np.float32),
                      np.triu(np.ones((n, n), dtype=np.float32), k=1),
                      -1.0 if fuse == "none" else float(protected + k),
                      np.arange(n_out, dtype=np.float32).reshape(1, n_out, 1))


@register
class EViT(Method):
    name = "evit"
    config = EViTConfig
    recipe = "evit-keep70"
    exclusive: ClassVar[dict[str, str]] = {"keep_rate": "keep", "keep": "keep_rate"}
    summary = ("attentive token keeping: keep the k tokens the CLS attends to most (or that "
               "receive the most attention: score mean), fuse the rest")

    def token_score(self, cfg: MethodConfig, geo: Geometry) -> str | None:
        """The score that ranks tokens: `cls` (refused with no protected token) or `mean`."""
        assert isinstance(cfg, EViTConfig)
        if cfg.score == "cls" and geo.protected < 1:
            raise BudgetError("evit.score=cls ranks tokens by the CLS token's attention, but "
                              "this model has no CLS (protected) token; set evit.score=mean to "
                              "rank them by the attention they receive (or give --protected N "
                              "for an ONNX source that has one)")
        return cfg.score

    def plan_block(self, cfg: MethodConfig, geo: Geometry, block: int, nth: int,
                   tokens: int) -> BlockStep | None:
        """Keep ceil(keep_rate · candidates) (or exactly `keep`) of the unprotected
        tokens and, unless fuse is none, add one token that fuses the rest."""
        assert isinstance(cfg, EViTConfig)
        cand = tokens - geo.protected
        extra = 0 if cfg.fuse == "none" else 1
        if cfg.keep is not None:
            if cfg.keep > cand:
                raise BudgetError(f"evit.keep={cfg.keep} at block {block} is impossible: only "
                                  f"{cand} unprotected tokens are left there; lower keep or use "
                                  "keep_rate")
            k = cfg.keep
        else:
            assert cfg.keep_rate is not None
            k = math.ceil(cfg.keep_rate * cand)
        if k + extra >= cand:  # nothing to prune (or the fused token would save nothing)
            return None
        score = self.token_score(cfg, geo)
        return BlockStep(geo.protected + k + extra, {"keep": k, "fuse": cfg.fuse,
                                                     "score": score})

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        """The kept-token count (N²) and the assignment MatMul (N'·N·C), which also
        forms the fused token's weighted sum."""
        n = plan.tokens_in
        return n * n + merge_macs(n, plan.tokens_out, geo.width)

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        em, p = site.em, site.protected
        n, k, fuse = site.plan.tokens_in, int(site.plan.params["keep"]), \
            str(site.plan.params["fuse"])
        tab = evit_tables(n, p, k, fuse)
        probs = site.block.probs  # [B, H, N, N]
        if str(site.plan.params.get("score", "cls")) == "cls":
            score = em.reduce("ReduceMean", em.slice(probs, 0, 1, axis=2), [1], 0)  # [B, 1, N]
        else:  # the attention each token receives, from every query
            score = em.op("Unsqueeze", em.reduce("ReduceMean", probs, [1, 2], 0),
                          em.const([1]))  # [B, 1, N]
        ranked = em.op("Where", em.const(tab.protected, np.bool_),
                       em.const(PROTECTED_SCORE, np.float32), score)
        _, rank = emit_ranks(em, ranked, n)  # protected first, then by score
        kept = emit_table(em, tab.kept_b, rank)  # [B, 1, N] bool
        keep_slot = em.op("MatMul", emit_table(em, tab.kept_f, rank),
                          em.const(tab.before, np.float32))
        slot = em.op("Where", kept, keep_slot, em.const(tab.drop_slot, np.float32))
        hit = em.op("Equal", slot, em.const(tab.rows, np.float32))  # [B, N', N]
        if fuse == "none":
            w = em.op("Cast", hit, to=ir.DataType.FLOAT)
        else:  # the dropped tokens' row: Σ score_j x_j (÷ Σ score_j for mean)
            w = em.op("Where", hit, em.op("Where", kept, em.const(1.0, np.float32), score),
                      em.const(0.0, np.float32))
            if fuse == "mean":
                w = em.op("Div", w, em.reduce("ReduceSum", w, [2], 1))
        s_new = None
        if site.size is not None:  # kept tokens keep their sizes; the fused one sums them
            s_row = em.op("Reshape", site.size, em.const([0, 1, -1]))
            s_new = em.reduce("ReduceSum", em.op("Where", hit, s_row,
                                                 em.const(0.0, np.float32)), [2], 1)
        return SiteOut(em.op("MatMul", w, site.x), s_new)

    # ---- torch ------------------------------------------------------------------------
    def eager(self, x: Tensor, sizes: Tensor | None, keys: Tensor, probs: Tensor,
              plan: LayerPlan, protected: int) -> tuple[Tensor, Tensor | None]:
        return evit_prune(x, sizes, probs, int(plan.params["keep"]), protected,
                          str(plan.params["fuse"]), str(plan.params.get("score", "cls")))


def evit_scores(attn: Tensor, protected: int, score: str = "cls") -> Tensor:
    """EViT token scores `[B, N - protected]` from attention probabilities
    `attn[B, H, N, N]`. `"cls"`: the attention the first token (CLS) pays each
    unprotected token, averaged over heads (needs `protected >= 1`); `"mean"`: the
    attention each unprotected token receives, averaged over heads and queries."""
    if score == "cls":
        if protected < 1:
            raise ValueError("EViT score 'cls' needs a protected (CLS) token; use 'mean'")
        return attn[:, :, 0, protected:].mean(dim=1)
    if score != "mean":
        raise ValueError(f"EViT score={score!r} is not one of cls, mean")
    return attn[:, :, :, protected:].mean(dim=(1, 2))


def evit_prune(x: Tensor, sizes: Tensor | None, attn: Tensor, keep: int, protected: int,
               fuse: str = "sum", score: str = "cls") -> tuple[Tensor, Tensor | None]:
    """EViT attentive token keeping.

    Args:
        x: tokens `[B, N, C]` (after the attention residual add).
        sizes: `[B, N, 1]` when earlier merges made tokens carry sizes, else None.
        attn: that block's attention probabilities `[B, H, N, N]`.
        keep: unprotected tokens to keep (`0 <= keep <= N - protected`).
        protected: leading tokens kept in front untouched.
        fuse: `"sum"` adds `Σ w_j x_j` over the dropped tokens (`w` = score),
            `"mean"` adds `Σ w_j x_j / Σ w_j`, `"none"` adds nothing.
        score: `"cls"` or `"mean"` (`evit_scores`).

    Returns:
        (`[B, protected + keep (+ 1), C]`: protected tokens, kept tokens in their
        original order, then the fused token; their sizes or None).
    """
    cand = x.shape[1] - protected
    if not 0 <= keep <= cand:
        raise ValueError(f"EViT keep={keep} is outside 0..{cand}")
    if fuse not in ("sum", "mean", "none"):
        raise ValueError(f"EViT fuse={fuse!r} is not one of sum, mean, none")
    rank = evit_scores(attn, protected, score)  # [B, cand]
    # top-k with ties -> lower index first, then back to spatial order
    top = torch.sort(rank, dim=-1, descending=True, stable=True).indices[:, :keep]
    idx = torch.sort(top, dim=-1).values
    body = x[:, protected:]
    parts = [x[:, :protected], gather_tokens(body, idx)]
    s_parts = [] if sizes is None else [sizes[:, :protected],
                                        gather_tokens(sizes[:, protected:], idx)]
    if fuse != "none":
        dropped = torch.ones_like(rank).scatter(1, idx, 0.0)
        w = (rank * dropped).unsqueeze(-1)  # [B, cand, 1]
        fused = (w * body).sum(dim=1, keepdim=True)
        if fuse == "mean":
            fused = fused / w.sum(dim=1, keepdim=True)
        parts.append(fused)
        if sizes is not None:
            s_parts.append((dropped.unsqueeze(-1) * sizes[:, protected:]).sum(1, keepdim=True))
    return torch.cat(parts, dim=1), torch.cat(s_parts, dim=1) if sizes is not None else None
