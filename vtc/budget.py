"""The static token budget: one immutable schedule shared by every stage.

A budget is resolved once from a recipe and the model geometry. It says, for
every transformer block, how many tokens enter it and how many leave it, and
which reduction the block performs. The reduction always sits at the same
place in a block — after the attention residual add, before the MLP — so the
MLP of a reducing block already runs on the smaller token count:

    x[B, N_in, C] ─► attn ─► (+) ─► reduce ─► x[B, N_out, C] ─► MLP ─► (+) ─► next block

The ONNX passes, the eager reference and the report all read the same object;
nothing mutates it.

FLOPs model (multiply-accumulates, one image, per block with width C, MLP width
M, attention over N_q queries and N_k keys):

    qkv + out projections   4 · N · C²
    attention scores + AV   2 · N · N · C
    MLP                     2 · N' · C · M       (N' = tokens after the reduction)

The patch embedding and the head are counted too; they do not change with the
budget. Merge / prune bookkeeping is not counted (it is < 1 % at ViT-B sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Method = Literal["none", "tome", "evit"]


class BudgetError(ValueError):
    """A budget that cannot be realised for this model (an input error)."""


@dataclass(frozen=True)
class Geometry:
    """What the budget needs to know about a ViT-style encoder.

    tokens: tokens entering block 0 (patches + CLS/distillation/registers).
    protected: how many leading tokens are never merged or pruned.
    """

    tokens: int
    protected: int
    width: int
    mlp_width: int
    layers: int
    patch_flops: int = 0  # MACs of the patch embedding, per image
    head_flops: int = 0  # MACs of the head, per image


@dataclass(frozen=True)
class LayerPlan:
    """One block: tokens_in enter; after the attention residual the block
    reduces them to tokens_out (merge `r` for ToMe, keep `keep` candidates
    plus an optional fused token for EViT)."""

    index: int
    tokens_in: int
    tokens_out: int
    op: Method = "none"
    r: int = 0
    keep: int = 0


@dataclass(frozen=True)
class Budget:
    method: Method
    geometry: Geometry
    layers: tuple[LayerPlan, ...]
    proportional_attention: bool = True
    evit_fuse: Literal["sum", "mean", "none"] = "sum"
    flops_base: int = field(default=0)
    flops: int = field(default=0)

    @property
    def tokens_in(self) -> int:
        return self.geometry.tokens

    @property
    def protected(self) -> int:
        return self.geometry.protected

    @property
    def tokens_out(self) -> int:
        return self.layers[-1].tokens_out if self.layers else self.geometry.tokens

    @property
    def tokens_per_layer(self) -> list[int]:
        """Tokens entering each block."""
        return [lp.tokens_in for lp in self.layers]

    @property
    def flops_ratio(self) -> float:
        """Uncompressed FLOPs divided by compressed FLOPs (≥ 1)."""
        return self.flops_base / self.flops if self.flops else 1.0

    @property
    def reducing_layers(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if lp.op != "none" and lp.tokens_out < lp.tokens_in]

    def to_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "tokens_in": self.tokens_in,
            "protected": self.protected,
            "tokens_per_layer": self.tokens_per_layer,
            "tokens_out": self.tokens_out,
            "r_per_layer": [lp.r for lp in self.layers],
            "keep_per_layer": [lp.keep for lp in self.layers],
            "proportional_attention": self.proportional_attention,
            "evit_fuse": self.evit_fuse,
            "flops_base": self.flops_base,
            "flops": self.flops,
            "flops_ratio": round(self.flops_ratio, 4),
        }


def block_flops(n_in: int, n_out: int, width: int, mlp_width: int) -> int:
    """MACs of one pre-norm block, per image (see the module docstring)."""
    return 4 * n_in * width * width + 2 * n_in * n_in * width + 2 * n_out * width * mlp_width


def _total_flops(geo: Geometry, plans: list[LayerPlan]) -> int:
    body = sum(block_flops(p.tokens_in, p.tokens_out, geo.width, geo.mlp_width) for p in plans)
    return geo.patch_flops + body + geo.head_flops


def _uniform(geo: Geometry) -> list[LayerPlan]:
    return [LayerPlan(i, geo.tokens, geo.tokens) for i in range(geo.layers)]


def _finish(method: Method, geo: Geometry, plans: list[LayerPlan], **kw: object) -> Budget:
    return Budget(
        method=method,
        geometry=geo,
        layers=tuple(plans),
        flops_base=_total_flops(geo, _uniform(geo)),
        flops=_total_flops(geo, plans),
        **kw,  # type: ignore[arg-type]
    )


def no_budget(geo: Geometry) -> Budget:
    """The identity schedule: every block keeps every token."""
    return _finish("none", geo, _uniform(geo))


def tome_schedule(geo: Geometry, r: int | list[int]) -> list[LayerPlan]:
    """ToMe: block i merges r_i tokens (bipartite matching over the
    unprotected tokens); r_i may not exceed half the unprotected tokens.

    A constant r is clipped to that limit in late blocks, as ToMe's own code
    does (r=16 on ViT-B/16 gives 197 → 21 → 11 in the last two blocks); it is
    an error only when r exceeds the limit at block 0. A per-block list is
    taken literally: any value above the limit is an error.
    """
    constant = isinstance(r, int)
    rs = [r] * geo.layers if isinstance(r, int) else list(r)
    if len(rs) != geo.layers:
        raise BudgetError(
            f"tome.r lists {len(rs)} values but the model has {geo.layers} blocks; "
            "give one value per block or a single integer"
        )
    plans, n = [], geo.tokens
    for i, ri in enumerate(rs):
        if ri < 0:
            raise BudgetError(f"tome.r for block {i} is {ri}; r must be >= 0")
        limit = (n - geo.protected) // 2
        if ri > limit and constant and i > 0:
            ri = limit
        if ri > limit:
            raise BudgetError(
                f"tome.r={ri} at block {i} is impossible: only {n - geo.protected} unprotected "
                f"tokens enter it, so r can be at most {limit}; lower r or use flops_ratio"
            )
        plans.append(LayerPlan(i, n, n - ri, "tome" if ri else "none", r=ri))
        n -= ri
    return plans


def solve_tome_r(geo: Geometry, flops_ratio: float) -> int:
    """Smallest constant r whose FLOPs ratio reaches `flops_ratio`."""
    if flops_ratio < 1.0:
        raise BudgetError(f"tome.flops_ratio={flops_ratio} must be >= 1.0")
    base = _total_flops(geo, _uniform(geo))
    r = 0
    while True:
        try:
            plans = tome_schedule(geo, r)
        except BudgetError:
            best = base / _total_flops(geo, tome_schedule(geo, r - 1))
            raise BudgetError(
                f"tome.flops_ratio={flops_ratio} cannot be reached: the largest feasible "
                f"constant r ({r - 1}) gives {best:.2f}"
            ) from None
        if base / _total_flops(geo, plans) >= flops_ratio:
            return r
        r += 1


def tome_budget(
    geo: Geometry,
    r: int | list[int] | None = None,
    flops_ratio: float | None = None,
    proportional_attention: bool = True,
) -> Budget:
    if (r is None) == (flops_ratio is None):
        raise BudgetError("give exactly one of tome.r and tome.flops_ratio")
    if r is None:
        assert flops_ratio is not None
        r = solve_tome_r(geo, flops_ratio)
    return _finish(
        "tome", geo, tome_schedule(geo, r), proportional_attention=proportional_attention
    )


def evit_budget(
    geo: Geometry,
    keep_rate: float | None,
    layers: list[int],
    fuse: Literal["sum", "mean", "none"] = "sum",
    keep: int | None = None,
) -> Budget:
    """EViT: at each block in `layers` keep ceil(keep_rate · candidates) of the
    unprotected tokens (or exactly `keep` of them), ranked by attention, and,
    unless fuse == "none", add one token that fuses the rest."""
    if (keep_rate is None) == (keep is None):
        raise BudgetError("give exactly one of evit.keep_rate and evit.keep")
    if keep_rate is not None and not 0.0 < keep_rate <= 1.0:
        raise BudgetError(f"evit.keep_rate={keep_rate} is outside (0, 1]; use e.g. 0.7")
    if keep is not None and keep < 1:
        raise BudgetError(f"evit.keep={keep} must be >= 1")
    bad = [i for i in layers if not 0 <= i < geo.layers]
    if bad:
        raise BudgetError(
            f"evit.layers {bad} are outside 0..{geo.layers - 1} (0-based block indices)"
        )
    plans, n = [], geo.tokens
    extra = 0 if fuse == "none" else 1
    for i in range(geo.layers):
        cand = n - geo.protected
        if i not in layers:
            plans.append(LayerPlan(i, n, n))
            continue
        if keep is not None:
            if keep > cand:
                raise BudgetError(
                    f"evit.keep={keep} at block {i} is impossible: only {cand} unprotected "
                    "tokens are left there; lower keep or use keep_rate"
                )
            k = keep
        else:
            assert keep_rate is not None
            k = math.ceil(keep_rate * cand)
        if k + extra >= cand:
            # Nothing to prune (or the fused token would not save anything).
            plans.append(LayerPlan(i, n, n))
            continue
        out = geo.protected + k + extra
        plans.append(LayerPlan(i, n, out, "evit", keep=k))
        n = out
    return _finish("evit", geo, plans, evit_fuse=fuse)
