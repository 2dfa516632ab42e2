"""What the size-weighted merge methods (ToMe, PiToMe) share: a static `r` per
block, its schedule and FLOPs solve, and the weighted average that folds the
merged tokens into their destinations, in ONNX and in torch.

Weighted merge, for source tokens `xa[src]` `[B, r, C]` with sizes `sa[src]`
merging into destinations `xb` `[B, Nb, C]` (sizes `sb`), `dst[B, r]` giving each
source's destination:

    num_b  = xb·sb + Σ_{src→dst} xa[src]·sa[src]      size_b = sb + Σ_{src→dst} sa[src]
    xb'    = num_b / size_b                           (sums, then divide: never
                                                       scatter_reduce(mean))

In ONNX the sums are a MatMul with the transposed one-hot assignment
`Equal(dst, range(Nb))` `[B, r, Nb]`; in torch a `scatter_add`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import field_validator, model_validator

from vtc.budget import BudgetError, Geometry
from vtc.methods.base import BlockStep, Method, MethodConfig

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import Tensor

    from vtc.passes.emit import Emitter


class MergeConfig(MethodConfig):
    """`r`: tokens merged per block (one integer for every block of the method, or one
    value per block); or `flops_ratio`: the smallest constant r reaching that ratio."""

    r: int | list[int] | None = None
    flops_ratio: float | None = None
    proportional_attention: bool = True

    @field_validator("r")
    @classmethod
    def _r(cls, v: int | list[int] | None) -> int | list[int] | None:
        vals = v if isinstance(v, list) else [v] if v is not None else []
        if any(x < 0 for x in vals):
            raise ValueError(f"r={v}: r must be >= 0")
        return v

    @field_validator("flops_ratio")
    @classmethod
    def _ratio(cls, v: float | None) -> float | None:
        if v is not None and not v >= 1.0:  # also refuses NaN
            raise ValueError(f"flops_ratio={v} must be >= 1.0 (1.0: no reduction)")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> MergeConfig:
        if self.r is not None and self.flops_ratio is not None:
            raise ValueError("give r or flops_ratio, not both (set the other to null)")
        return self


class MergeMethod(Method):
    """A merge with `r` tokens removed per block; subclasses write the matching."""

    merges = True
    config = MergeConfig
    exclusive: ClassVar[dict[str, str]] = {"r": "flops_ratio", "flops_ratio": "r"}

    def limit(self, tokens: int, protected: int) -> int:
        """The largest r one block can merge."""
        return (tokens - protected) // 2

    def _rs(self, cfg: MergeConfig, geo: Geometry) -> list[int]:
        n = len(self.blocks(cfg, geo))
        r = 0 if cfg.r is None else cfg.r
        if isinstance(r, int):
            return [r] * n
        if len(r) != n:
            where = "blocks" if cfg.layers is None else f"layers {cfg.layers}"
            raise BudgetError(f"{self.name}.r lists {len(r)} values but it acts in {n} {where}; "
                              "give one value per block or a single integer")
        return list(r)

    def plan_block(self, cfg: MethodConfig, geo: Geometry, block: int, nth: int,
                   tokens: int) -> BlockStep | None:
        """r tokens merged; a constant r is clipped to the limit in later blocks, as
        ToMe's own code does (r=16 on ViT-B/16: 197 → … → 21 → 11), and is an error only
        at the method's first block. A per-block list is taken literally."""
        assert isinstance(cfg, MergeConfig)
        r = self._rs(cfg, geo)[nth]
        limit = self.limit(tokens, geo.protected)
        if r > limit and isinstance(cfg.r, int) and nth > 0:
            r = limit
        if r > limit:
            raise BudgetError(
                f"{self.name}.r={r} at block {block} is impossible: only {tokens - geo.protected}"
                f" unprotected tokens enter it, so r can be at most {limit}; lower r or use "
                "flops_ratio")
        if r == 0:
            return None
        return BlockStep(tokens - r, {"r": r, **self.block_params(cfg, geo, block)})

    def block_params(self, cfg: MergeConfig, geo: Geometry, block: int) -> dict[str, object]:
        """Parameters of this method in `block`, besides r."""
        return {}

    def resolve(self, cfg: MethodConfig, geo: Geometry,
                ratio_of: Callable[[MethodConfig], float]) -> MethodConfig:
        assert isinstance(cfg, MergeConfig)
        if cfg.flops_ratio is None:
            return cfg
        r = 0
        while True:
            trial = cfg.model_copy(update={"r": r, "flops_ratio": None})
            try:
                got = ratio_of(trial)
            except BudgetError:
                best = ratio_of(cfg.model_copy(update={"r": r - 1, "flops_ratio": None}))
                raise BudgetError(
                    f"{self.name}.flops_ratio={cfg.flops_ratio} cannot be reached: the largest "
                    f"feasible constant r ({r - 1}) gives {best:.2f}") from None
            if got >= cfg.flops_ratio:
                return trial
            r += 1

    def attn_bias(self, cfg: MethodConfig) -> bool:
        assert isinstance(cfg, MergeConfig)
        return cfg.proportional_attention


# ---- the weighted merge, twice ------------------------------------------------------------

def emit_weighted_merge(em: Emitter, xs: ir.Value, ss: ir.Value | None, xb: ir.Value,
                        sb: ir.Value | None, dst: ir.Value, nb: int
                        ) -> tuple[ir.Value, ir.Value]:
    """xs `[B, r, C]` (sizes ss `[B, r, 1]`) merge into xb `[B, Nb, C]` (sizes sb) at
    dst `[B, r]`; None sizes are all 1. Returns (xb' `[B, Nb, C]`, size_b `[B, Nb, 1]`)."""
    assign_t = em.op("Transpose", em.one_hot(dst, nb), perm=[0, 2, 1])  # [B, Nb, r]
    if ss is None or sb is None:
        assert ss is None and sb is None, "sizes travel together"
        num_b = em.op("Add", xb, em.op("MatMul", assign_t, xs))
        size_b = em.op("Add", em.reduce("ReduceSum", assign_t, [2], 1),
                       em.const(1.0, np.float32))
    else:
        num_b = em.op("Add", em.op("Mul", xb, sb), em.op("MatMul", assign_t, em.op("Mul", xs, ss)))
        size_b = em.op("Add", sb, em.op("MatMul", assign_t, ss))
    return em.op("Div", num_b, size_b), size_b


def unit_sizes(em: Emitter, like: ir.Value) -> ir.Value:
    """Sizes of 1 for every token of like `[B, n, C]`: `[B, n, 1]`."""
    first = em.slice(like, 0, 1, axis=2)
    return em.op("Add", em.op("Mul", first, em.const(0.0, np.float32)),
                 em.const(1.0, np.float32))


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x `[B, N, C]`, idx `[B, K]` → `x[b, idx[b, k]]` as `[B, K, C]`."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def weighted_merge(xs: Tensor, ss: Tensor, xb: Tensor, sb: Tensor, dst: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """Torch twin of `emit_weighted_merge` (sizes given): → (xb' `[B, Nb, C]`, size_b)."""
    c = xb.shape[-1]
    num_b = (xb * sb).scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, c), xs * ss)
    size_b = sb.scatter_add(1, dst.unsqueeze(-1), ss)
    return num_b / size_b, size_b


def ones_like_sizes(x: Tensor) -> Tensor:
    """Sizes of 1 for x `[B, N, C]`: `[B, N, 1]`."""
    import torch

    return torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype)
