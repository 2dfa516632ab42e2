"""What the size-weighted merge methods (ToMe, PiToMe) share: a static `r` per
block, its schedule and FLOPs solve, the metric, and the merge itself in its two
formulations (`vtc.budget`: the same decisions, a question of cost), in ONNX and in
torch.

Weighted merge, for source tokens `xs` `[B, r, C]` with sizes `ss` merging into
destinations `xb` `[B, Nb, C]` (sizes `sb`), `dst[B, r]` giving each source's
destination::

    num_b  = xb·sb + Σ_{src→dst} xs·ss      size_b = sb + Σ_{src→dst} ss
    xb'    = num_b / size_b                  (sums, then divide: never scatter_reduce(mean))

**gather** (`emit_weighted_merge`): the tokens are moved as whole rows (GatherND,
Slice, Concat) and the sums are a MatMul with the one-hot `Equal(dst, range(Nb))`
`[B, r, Nb]`, transposed: few MACs, more nodes.

**compact** (`emit_slot_merge`): the method computes each input token's **slot** — the
output row it goes to, merged tokens sharing their destination's — as a float row
`[B, 1, N]` in the original token order (`emit_ranks`, `emit_table`: constant tables
and two TopKs, no scatter); one assignment matrix then does every gather, sum and
concat::

    slot[B,1,N] ─► Equal(rows[1,N',1]) ─► W[B,N',N]          (W[o, j] = slot_j == o)
    W, s[B,N,1] ─► Where(W, sᵀ, 0) ─► W_s ─► ReduceSum(axis 2) ─► s'[B,N',1]
    W_s / s' ─► MatMul(·, x[B,N,C]) ─► x'[B,N',C]

A row that receives one token has the weight s/s = 1 exactly, so kept tokens are
copied bit for bit; a merged row is Σ (s_i / S)·x_i. W costs N'·N·C MACs
(`merge_macs`). The slot vector is also the block's unmerge slot map.

In torch the merge is a `scatter_add` of `x·s` and `s`, then a divide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import field_validator, model_validator

from vtc.budget import BudgetError, Geometry
from vtc.methods.base import BlockStep, Method, MethodConfig, SiteConfig

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import Tensor

    from vtc.passes.emit import Emitter


class MergeConfig(SiteConfig):
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


# ---- the metric, both formulations --------------------------------------------------------

def emit_unit_metric(em: Emitter, block: object, tokens: int) -> ir.Value:
    """The matching metric of every token as rows, `[B, N, D]`: the block's keys averaged
    over heads (`vtc.passes.layout.key_rows`: from the key projection where it can be
    found, so that an engine fusing attention drops Kᵀ), L2-normalised along D
    (LpNormalization: in ONNX Runtime bit for bit ReduceL2 then Div, in one node)."""
    from vtc.passes.layout import key_rows

    return em.op("LpNormalization", key_rows(em, block, tokens), axis=2, p=2)  # type: ignore[arg-type]


def emit_unit_metric_cols(em: Emitter, block: object) -> ir.Value:
    """The same metric as columns, `[B, D, N]`, in two nodes: the mean over the heads of
    `Kᵀ [B, H, D, N]` as the QK MatMul reads it, normalised along D (the compact
    formulations, which count nodes; the engine keeps Kᵀ for it)."""
    k = em.reduce("ReduceMean", block.key_t, [1], 0)  # type: ignore[attr-defined]
    return em.op("LpNormalization", k, axis=1, p=2)


# ---- compact: slots and one assignment matrix ------------------------------------------

MASKED = -10.0  # a similarity no pair of tokens has: cosines lie in [-1, 1]


def emit_ranks(em: Emitter, score: ir.Value, n: int) -> tuple[ir.Value, ir.Value]:
    """score `[B, 1, N]` → (order, rank), both int64 `[B, 1, N]`: order[k] is the token of
    the k-th highest score (ties: the lower index first, as a stable descending sort),
    rank[j] the place of token j in that order (the inverse permutation: an ascending
    TopK over the int64 order, which ONNX's TopK takes and ONNX Runtime and OpenVINO run;
    exact for any N)."""
    n_ = em.const([n])
    _, order = em.op("TopK", score, n_, outputs=2, axis=-1, largest=1, sorted=1)
    _, rank = em.op("TopK", order, n_, outputs=2, axis=-1, largest=0, sorted=1)
    return order, rank


def emit_best(em: Emitter, scores: ir.Value) -> tuple[ir.Value, ir.Value]:
    """scores `[B, M, N]` → (max, argmax) over axis 1, `[B, 1, N]` each (TopK with K=1:
    ties go to the lower index, as ArgMax's first occurrence)."""
    best, idx = em.op("TopK", scores, em.const([1]), outputs=2, axis=1, largest=1, sorted=1)
    return best, idx


def emit_table(em: Emitter, table: np.ndarray, idx: ir.Value) -> ir.Value:
    """`table[idx]`: a constant 1-D table looked up at int64 indices (Gather)."""
    return em.op("Gather", em.const(table, table.dtype), idx, axis=0)


def emit_slot_merge(em: Emitter, x: ir.Value, size: ir.Value | None, slot: ir.Value,
                    n_out: int) -> tuple[ir.Value, ir.Value]:
    """x `[B, N, C]` (sizes `[B, N, 1]`, None: all 1) and slot `[B, 1, N]` (float: the
    output row of every token) → (x' `[B, N', C]`, sizes' `[B, N', 1]`), each output row
    the size-weighted average of the tokens whose slot it is (module docstring)."""
    rows = em.const(np.arange(n_out, dtype=np.float32).reshape(1, n_out, 1), np.float32)
    hit = em.op("Equal", slot, rows)  # [B, N', N]
    if size is None:
        w = em.op("Cast", hit, to=ir_float())
    else:
        s_row = em.op("Reshape", size, em.const([0, 1, -1]))  # [B, 1, N]
        w = em.op("Where", hit, s_row, em.const(0.0, np.float32))
    s_new = em.reduce("ReduceSum", w, [2], 1)  # [B, N', 1]
    return em.op("MatMul", em.op("Div", w, s_new), x), s_new


def slot_map(em: Emitter, slot: ir.Value) -> ir.Value:
    """slot `[B, 1, N]` → the unmerge slot map `[B, N]` (float)."""
    return em.op("Reshape", slot, em.const([0, -1]))


def merge_macs(tokens_in: int, tokens_out: int, width: int) -> int:
    """MACs per image of the assignment MatMul of `emit_slot_merge`: N'·N·C."""
    return tokens_out * tokens_in * width


def ir_float() -> object:
    import onnx_ir as ir

    return ir.DataType.FLOAT


# ---- gather: rows moved, a small one-hot MatMul ------------------------------------------

def emit_best_col(em: Emitter, scores: ir.Value) -> tuple[ir.Value, ir.Value]:
    """scores `[B, M, N]` → (max, argmax) over the last axis, `[B, M, 1]` each (TopK with
    K=1: one pass instead of ReduceMax + ArgMax; ties to the lower index, as ArgMax)."""
    best, idx = em.op("TopK", scores, em.const([1]), outputs=2, axis=-1, largest=1, sorted=1)
    return best, idx


def emit_weighted_merge(em: Emitter, xs: ir.Value, xb: ir.Value, dst: ir.Value, nb: int,
                        sizes: tuple[ir.Value, ir.Value] | None = None
                        ) -> tuple[ir.Value, ir.Value]:
    """xs `[B, r, C]` merge into xb `[B, Nb, C]` at dst `[B, r, 1]` (or `[B, r]`, int64,
    destinations among the Nb); `sizes` (ss `[B, r, 1]`, sb `[B, Nb, 1]`), None: all 1.
    Returns (xb' `[B, Nb, C]`, size_b `[B, Nb, 1]`)."""
    dst_row = em.op("Reshape", dst, em.const([0, 1, -1]))  # [B, 1, r]
    rows = em.const(np.arange(nb).reshape(1, nb, 1))
    assign_t = em.op("Cast", em.op("Equal", rows, dst_row), to=ir_float())  # [B, Nb, r]
    if sizes is None:
        num_b = em.op("Add", xb, em.op("MatMul", assign_t, xs))
        size_b = em.op("Add", em.reduce("ReduceSum", assign_t, [2], 1),
                       em.const(1.0, np.float32))
    else:
        ss, sb = sizes
        num_b = em.op("Add", em.op("Mul", xb, sb), em.op("MatMul", assign_t, em.op("Mul", xs, ss)))
        size_b = em.op("Add", sb, em.op("MatMul", assign_t, ss))
    return em.op("Div", num_b, size_b), size_b


def unit_sizes(em: Emitter, like: ir.Value, count: int | None = None) -> ir.Value:
    """Sizes of 1 for the first `count` tokens of like `[B, n, C]` (all: None):
    `[B, count, 1]`, from a `[B, count, 1]` slice of it (no copy of its rows)."""
    end = [count if count is not None else 2**62, 1]
    first = em.op("Slice", like, em.const([0, 0]), em.const(end), em.const([1, 2]))
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
