"""The static token budget: one immutable schedule shared by every stage.

A budget is resolved once from a recipe and the model geometry (by
`vtc.methods.plan_budget`). It says, for every transformer block, how many
tokens enter it, how many leave it, which reduction method acts there and with
which frozen parameters. It knows nothing about any particular method: the
per-block facts are method-neutral. A reduction always sits at the same place
in a block — after the attention residual add, before the MLP — so the MLP of
a reducing block already runs on the smaller token count:

    x[B, N_in, C] ─► attn(+ log s) ─► (+) ─► reduce ─► x[B, N_out, C] ─► MLP ─► (+) ─► next block

`attn_bias` marks the blocks whose attention logits get `log(size)` added
along the key axis (proportional attention, once merged tokens carry sizes).

The ONNX passes, the eager reference and the report all read the same object;
nothing mutates it.

FLOPs model (multiply-accumulates, one image, per block with width C, MLP width
M, attention over N queries and N keys):

    qkv + out projections   4 · N · C²
    attention scores + AV   2 · N · N · C
    MLP                     2 · N' · C · M       (N' = tokens after the reduction)

The patch embedding and the head are counted too; they do not change with the
budget. The reductions' own bookkeeping (similarity matrices, sorting) is
reported separately as `flops_overhead` and is not part of `flops_ratio`, so
methods compare at equal backbone FLOPs.

Cost model of a reduction site (`SiteCost`, `EngineCost`, `choose`). A method can
write one site in several formulations that take the same decisions: `gather` moves
whole token rows (GatherND, Slice, Concat) and keeps the matching on the A/B split,
`compact` builds one assignment matrix and applies it as a MatMul (few nodes, but
N'·N·C MACs). Which is cheaper depends on the engine: a node costs a launch, a MAC
and a moved element cost throughput. Per batch::

    seconds = batch · (macs / mac_rate + elements / element_rate) + nodes · launch

with the three constants of the engine kind (`ENGINE_COSTS`, each with where it
comes from). `choose` picks the cheaper formulation of each site; the budget records
the choice in `LayerPlan.formulation` and the figures in `Budget.sites`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vtc.errors import InputError

NONE = "none"  # the method name of a block that keeps every token
GATHER, COMPACT = "gather", "compact"  # the formulations of a reduction site


class BudgetError(InputError):
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
    heads: int = 1  # attention heads (for the bookkeeping FLOPs of the reductions)


@dataclass(frozen=True)
class LayerPlan:
    """One block: `tokens_in` enter; after the attention residual, `method` reduces
    them to `tokens_out` with its frozen `params` (e.g. ``{"r": 8}``)."""

    index: int
    tokens_in: int
    tokens_out: int
    method: str = NONE
    params: Mapping[str, Any] = field(default_factory=dict)
    attn_bias: bool = False
    # how the graph writes the reduction (GATHER | COMPACT; "" where nothing is reduced):
    # the same decisions either way, a question of cost (`choose`)
    formulation: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, "method": self.method,
                "params": dict(self.params), "attn_bias": self.attn_bias,
                "formulation": self.formulation}


# ---- the cost model of a reduction site ---------------------------------------------------

@dataclass(frozen=True)
class SiteCost:
    """What one formulation of a site costs: `macs` (MatMul multiply-accumulates) and
    `elements` (values written by copies, gathers and elementwise ops), both per image;
    `nodes`, the ONNX nodes it adds (launches, once per batch)."""

    macs: int
    elements: int
    nodes: int


@dataclass(frozen=True)
class EngineCost:
    """An engine kind's prices: one node launch (µs), MatMul MACs per µs, elements
    written per µs; `source`: where the figures come from."""

    launch_us: float
    macs_per_us: float
    elements_per_us: float
    source: str

    def seconds(self, cost: SiteCost, batch: int) -> float:
        """The model's time for one batch: batch · (work) + nodes · launch."""
        work = cost.macs / self.macs_per_us + cost.elements / self.elements_per_us
        return (batch * work + cost.nodes * self.launch_us) * 1e-6


# The CPU rows are measured by `python -m bench.cost_model` (medians of 15 interleaved
# rounds, three runs, 2026-12-07) on the 2-core development machine, ORT 1.32 CPU EP and
# OpenVINO 2026.4 CPU, while other sessions loaded it (load average 8-9 on 2 cores):
# launch = the time per node added by a chain of 400 small elementwise nodes on
# [8, 1, 197] over one of 40 (ORT 10.5-13.4 µs; OpenVINO 1.3-2.1 µs, where such chains
# may be fused); MACs = a batched MatMul [8, 181, 197] × [8, 197, 768], the assignment
# MatMul of a ViT-B/16 site (ORT 7.3-8.6 k/µs, OpenVINO 8.0-9.0 k/µs); elements = a
# GatherND of 181 rows of 768 out of [8, 197, 768] (ORT 300-358 /µs, OpenVINO 94-155
# /µs). The load slows everything several-fold and inflates the launch cost most (an
# earlier, lighter-loaded ORT chain gave 0.8 µs per node); what decides is the ratio of
# the prices, which the load shifts less. No GPU price could be measured here (no GPU):
# the CUDA and TensorRT rows are stated assumptions, a few µs per kernel launch (CUDA's
# launch latency) and the dense throughput of a small data-center GPU (T4: 65 TFLOP/s
# fp16, 320 GB/s), which make the compact formulation win wherever its MACs are not
# huge. Rerun `bench.cost_model` on a quiet machine to replace the CPU rows.
ENGINE_COSTS: dict[str, EngineCost] = {
    "ort": EngineCost(launch_us=11.0, macs_per_us=8.4e3, elements_per_us=340.0,
                      source="bench.cost_model, ORT 1.32 CPU EP, 2-core machine under "
                      "load, 2026-12-07"),
    "openvino": EngineCost(launch_us=1.5, macs_per_us=8.6e3, elements_per_us=150.0,
                           source="bench.cost_model, OpenVINO 2026.4 CPU, 2-core machine "
                           "under load, 2026-12-07"),
    "ort-cuda": EngineCost(launch_us=5.0, macs_per_us=3.0e7, elements_per_us=8.0e4,
                           source="assumed (no GPU here): CUDA launch latency, T4 "
                           "throughput"),
    "tensorrt": EngineCost(launch_us=3.0, macs_per_us=3.0e7, elements_per_us=8.0e4,
                           source="assumed (no GPU here): a TensorRT kernel launch, T4 "
                           "throughput"),
}


@dataclass(frozen=True)
class Pricing:
    """Which engine the budget prices its sites for, at which batch: `kind` is a key of
    `ENGINE_COSTS` (an engine kind; `ort-cuda` for ONNX Runtime on the CUDA EP)."""

    kind: str = "ort"
    batch: int = 1

    @property
    def engine(self) -> EngineCost:
        return ENGINE_COSTS.get(self.kind, ENGINE_COSTS["ort"])


def choose(costs: Mapping[str, SiteCost], pricing: Pricing) -> str:
    """The formulation whose modelled time per batch is lowest (ties: the first)."""
    eng = pricing.engine
    return min(costs, key=lambda f: eng.seconds(costs[f], pricing.batch))


@dataclass(frozen=True)
class SitePlan:
    """The formulation of one reducing block and the figures behind it: `costs` per
    formulation, `chosen_by` "cost" (the model) or "recipe" (forced by the method's
    `formulation` setting), priced for `pricing`."""

    block: int
    method: str
    formulation: str
    chosen_by: str
    costs: Mapping[str, SiteCost]
    pricing: Pricing

    def seconds(self, formulation: str) -> float:
        return self.pricing.engine.seconds(self.costs[formulation], self.pricing.batch)


@dataclass(frozen=True)
class Budget:
    geometry: Geometry
    layers: tuple[LayerPlan, ...]
    methods: tuple[str, ...] = ()  # the recipe's methods, in its order
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    flops_base: int = 0
    flops: int = 0
    flops_overhead: int = 0
    # attention-ranked methods → the score that ranked their tokens (e.g. evit: "mean")
    scores: Mapping[str, str] = field(default_factory=dict)
    # each reducing block's formulation and the cost figures behind it, in block order
    sites: tuple[SitePlan, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))
        frozen = {k: MappingProxyType(dict(v)) for k, v in self.settings.items()}
        object.__setattr__(self, "settings", MappingProxyType(frozen))

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
        return [lp for lp in self.layers if lp.method != NONE and lp.tokens_out < lp.tokens_in]

    @property
    def label(self) -> str:
        """The methods as one word for logs: ``tome``, ``tome+evit`` or ``none``."""
        return "+".join(self.methods) or NONE

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "settings": {k: dict(v) for k, v in self.settings.items()},
            "tokens_in": self.tokens_in,
            "protected": self.protected,
            "tokens_per_layer": self.tokens_per_layer,
            "tokens_out": self.tokens_out,
            "layers": [lp.to_dict() for lp in self.layers],
            "flops_base": self.flops_base,
            "flops": self.flops,
            "flops_ratio": round(self.flops_ratio, 4),
            "flops_overhead": self.flops_overhead,
            "scores": dict(self.scores),
        }


def block_flops(n_in: int, n_out: int, width: int, mlp_width: int) -> int:
    """MACs of one pre-norm block, per image (see the module docstring)."""
    return 4 * n_in * width * width + 2 * n_in * n_in * width + 2 * n_out * width * mlp_width


def total_flops(geo: Geometry, plans: list[LayerPlan]) -> int:
    body = sum(block_flops(p.tokens_in, p.tokens_out, geo.width, geo.mlp_width) for p in plans)
    return geo.patch_flops + body + geo.head_flops


def uniform(geo: Geometry) -> list[LayerPlan]:
    """Every block keeps every token."""
    return [LayerPlan(i, geo.tokens, geo.tokens) for i in range(geo.layers)]


def finish(geo: Geometry, plans: list[LayerPlan], methods: tuple[str, ...] = (),
           settings: Mapping[str, Mapping[str, Any]] | None = None, overhead: int = 0,
           scores: Mapping[str, str] | None = None,
           sites: tuple[SitePlan, ...] = ()) -> Budget:
    """The budget of a finished per-block schedule, with its FLOPs."""
    return Budget(geometry=geo, layers=tuple(plans), methods=methods, settings=settings or {},
                  flops_base=total_flops(geo, uniform(geo)), flops=total_flops(geo, plans),
                  flops_overhead=overhead, scores=scores or {}, sites=sites)


def no_budget(geo: Geometry) -> Budget:
    """The identity schedule: every block keeps every token."""
    return finish(geo, uniform(geo))
