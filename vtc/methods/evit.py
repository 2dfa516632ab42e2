"""EViT: keep the k most attended tokens, fuse the rest (Liang et al., ICLR 2022;
docs/algorithms.md).

Recipe section::

    evit:
      keep_rate: 0.7             # or keep: 50 (absolute k per pruning block)
      at_depth: [0.25, 0.5, 0.75]  # the pruning blocks as fractions of the depth L:
                                 # block floor(f · L) (3, 6, 9 of 12; 1, 3, 4 of 6)
      # layers: [3, 6, 9]        # or the 0-based blocks themselves (clears at_depth)
      fuse: sum                  # sum | mean | none
      score: cls                 # cls | mean: how tokens are ranked (below)

`at_depth` is resolved against the model when the budget is planned; the report's
`budget.settings.evit` records the blocks it gave (`layers`) beside the fractions.

Scores: ``cls`` ranks the unprotected tokens by the attention the first (CLS) token
pays them, averaged over heads (the paper's); ``mean`` ranks them by the attention
they receive, averaged over heads and every query (for models without a CLS token).
``cls`` on a model with no protected token is refused: the recipe must say
``score: mean``, so the report never hides which score ranked the tokens.

Before (one block, N tokens)::

    x_in ─► LN ─► attn ─► Softmax ─► A[B,H,N,N] ─► … ─► Add ─► x_mid[B,N,C] ─► LN ─► MLP ─► Add

After, **gather** (k kept at this block, P protected, one fused token)::

    A ─► Slice(row 0, cols P:) ─► ReduceMean(H) ─► score[B, N-P]          (score: cls)
    A ─► Slice(cols P:) ─► ReduceMean(H, queries) ─► score[B, N-P]        (score: mean)
    score ─► TopK(k) ─► sort ─► idx[B, k] ─► GatherND ─► kept[B, k, C]
    score · (1 - one-hot-mask(idx)) ─► MatMul with x_mid[:, P:] ─► fused[B, 1, C]  (÷ Σw: "mean")
    x' = concat(x_mid[:, :P], kept, fused)[B, P+k+1, C] ─► LN ─► MLP ─► Add

After, **compact** (per-token vectors are rows `[B, 1, N]` in the original order)::

    A ─► Slice(row 0) ─► ReduceMean(H) ─► score[B,1,N]                    (score: cls)
    A ─► ReduceMean(H, queries) ─► Unsqueeze ─► score[B,1,N]              (score: mean)
    score ─► Where(protected, 2, score) ─► TopK ─► Cast ─► TopK (inverse) ─► rank
    kept = rank < P + k;  slot = Where(kept, kept · before, P + k)   (before[i, j] = i < j)
    W = Equal(slot, rows[1,N',1]) ─► Where(W, Where(kept, 1, score), 0)  (÷ ΣW: "mean")
    x' = W · x_mid [B, P+k+1, C]: protected, kept (position order), fused Σ score_j x_j

Kept tokens are copied bit for bit either way (weight 1 in compact); `vtc.budget.choose`
picks the formulation per block, `evit.formulation` forces one.

After a merge method (a chained recipe) tokens carry sizes: kept tokens keep theirs
and the fused token's size is the sum of the dropped tokens' sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import field_validator, model_validator

from vtc.budget import COMPACT, GATHER, BudgetError, Geometry, LayerPlan
from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteConfig, SiteOut
from vtc.methods.merging import emit_ranks, emit_table, gather_tokens, ir_float, merge_macs
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor

Fuse = Literal["sum", "mean", "none"]
Score = Literal["cls", "mean"]


class EViTConfig(SiteConfig):
    keep_rate: float | None = 0.7
    keep: int | None = None  # absolute k per pruning block (set keep_rate: null)
    # the pruning blocks as fractions of the model's depth (block floor(f · L)); the
    # paper's blocks 4, 7, 10 of DeiT-S's 12. Giving `layers` clears it.
    at_depth: list[float] | None = [0.25, 0.5, 0.75]  # noqa: RUF012 - pydantic copies
    fuse: Fuse = "sum"
    score: Score = "cls"  # cls: attention from the CLS token; mean: attention received

    @model_validator(mode="before")
    @classmethod
    def _layers_clear_depth(cls, data: Any) -> Any:
        """`layers` given without `at_depth`: the blocks themselves (at_depth cleared)."""
        if isinstance(data, dict) and "layers" in data and "at_depth" not in data:
            data = {**data, "at_depth": None}
        return data

    @field_validator("at_depth")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or not all(0.0 <= f < 1.0 for f in v)):  # refuses NaN
            raise ValueError(f"at_depth={v}: give fractions of the depth in [0, 1), e.g. "
                             "[0.25, 0.5, 0.75], or set at_depth: null and give layers")
        return v

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
        if self.at_depth is not None and self.layers is not None:
            raise ValueError("give at_depth (fractions of the depth) or layers (block "
                             "indices), not both (set the other to null)")
        return self


def depth_blocks(fractions: list[float], depth: int) -> list[int]:
    """Fractions of a model's depth → 0-based blocks: floor(f · depth), each once, in
    order ([0.25, 0.5, 0.75] → [3, 6, 9] of 12, [1, 3, 4] of 6, [0, 1, 2] of 3)."""
    return sorted({min(depth - 1, math.floor(f * depth)) for f in fractions})


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
    exclusive: ClassVar[dict[str, str]] = {"keep_rate": "keep", "keep": "keep_rate",
                                           "layers": "at_depth", "at_depth": "layers"}
    summary = ("attentive token keeping: keep the k tokens the CLS attends to most (or that "
               "receive the most attention: score mean), fuse the rest")
    formulations = (GATHER, COMPACT)

    def blocks(self, cfg: MethodConfig, geo: Geometry) -> list[int]:
        """`at_depth` resolved against the model's depth, else `layers` (Method.blocks)."""
        assert isinstance(cfg, EViTConfig)
        if cfg.at_depth is not None and cfg.layers is None:
            return depth_blocks(cfg.at_depth, geo.layers)
        return super().blocks(cfg, geo)

    def resolve(self, cfg: MethodConfig, geo: Geometry,
                ratio_of: Callable[[MethodConfig], float]) -> MethodConfig:
        """`at_depth` → `layers` (both kept: the report shows where the blocks came from)."""
        assert isinstance(cfg, EViTConfig)
        if cfg.at_depth is None or cfg.layers is not None:
            return cfg
        return cfg.model_copy(update={"layers": depth_blocks(cfg.at_depth, geo.layers)})

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
        return (plan.tokens_in - geo.protected) * geo.width  # the fused token's weighted sum

    def work(self, plan: LayerPlan, geo: Geometry, formulation: str, sized: bool
             ) -> tuple[int, int]:
        """gather: the fused token's weighted sum ((N − P)·C); rows moved: the kept
        tokens, the output. compact: the kept count (N²) and the assignment MatMul
        (N'·N·C); the [B, N', N] matrix built three times, the output."""
        n, n_out, c = plan.tokens_in, plan.tokens_out, geo.width
        if formulation == COMPACT:
            return n * n + merge_macs(n, n_out, c), 3 * n_out * n + n_out * c
        return (n - geo.protected) * c, 2 * n_out * c + n

    # ---- ONNX -------------------------------------------------------------------------
    def emit(self, site: Site) -> SiteOut:
        return (self._compact if site.formulation == COMPACT else self._gather)(site)

    def _compact(self, site: Site) -> SiteOut:
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
            w = em.op("Cast", hit, to=ir_float())
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

    def _gather(self, site: Site) -> SiteOut:
        em, blk, x, size, p = site.em, site.block, site.x, site.size, site.protected
        n, k, fuse = site.plan.tokens_in, int(site.plan.params["keep"]), \
            str(site.plan.params["fuse"])
        probs = blk.probs
        if str(site.plan.params.get("score", "cls")) == "cls":
            row = em.op("Slice", probs, em.const([0, p]), em.const([1, n]), em.const([2, 3]))
        else:  # the attention each token receives, from every query
            row = em.slice(probs, p, n, axis=3) if p else probs
        score = em.reduce("ReduceMean", row, [1, 2], 0)  # [B, N-P]
        _, top = em.op("TopK", score, em.const([k]), outputs=2, axis=-1, largest=1, sorted=1)
        idx = em.sort_ascending(top, k)
        xp = em.slice(x, p, n, axis=1)
        front = [em.slice(x, 0, p, axis=1)] if p else []
        parts = [*front, em.take_rows(xp, idx)]
        sp = em.slice(size, p, n, axis=1) if size is not None else None
        s_parts = ([em.slice(size, 0, p, axis=1)] if p and size is not None else []) + (
            [em.take_rows(sp, idx)] if sp is not None else [])
        if fuse != "none":
            mask = em.reduce("ReduceMax", em.one_hot(idx, n - p), [1], 0)  # [B, N-P]
            dropped = em.op("Sub", em.const(1.0, np.float32), mask)
            w3 = em.op("Unsqueeze", em.op("Mul", score, dropped), em.const([1]))  # [B, 1, N-P]
            fused = em.op("MatMul", w3, xp)  # [B, 1, C]
            if fuse == "mean":
                fused = em.op("Div", fused, em.reduce("ReduceSum", w3, [2], 1))
            parts.append(fused)
            if sp is not None:
                d3 = em.op("Unsqueeze", dropped, em.const([1]))  # [B, 1, N-P]
                s_parts.append(em.op("MatMul", d3, sp))  # [B, 1, 1]
        x_new = em.op("Concat", *parts, axis=1)
        s_new = em.op("Concat", *s_parts, axis=1) if size is not None else None
        return SiteOut(x_new, s_new)

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
    import torch

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
