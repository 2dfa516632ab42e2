"""What a reduction method is: one module holding its recipe section, its static
schedule, its ONNX pass and its eager reference op.

A method is a stateless object registered by decorator (`vtc.methods.register`).
The pipeline never names a method: the budget planner, the compress stage and
the eager reference dispatch on `LayerPlan.method`.

* **Recipe section** — `config`, a pydantic model (unknown keys are errors). Every
  method has `layers`: the 0-based blocks it acts in (null: every block; a recipe
  chaining several methods gives them disjoint blocks).
* **Static schedule** — `plan_block` turns the section into the tokens leaving one
  block and the frozen parameters the pass and the eager op read (e.g. ``{"r": 8}``);
  `resolve` may solve a FLOPs target first; `overhead` counts the method's own
  bookkeeping MACs.
* **ONNX pass** — `emit` writes the reduction of one block with the portable ops of
  `vtc.passes.emit` (no scatter, TopK with a constant K), in the formulation the budget
  chose for the block (`formulations`: `gather` moves token rows, `compact` applies one
  assignment matrix; the same decisions either way). `work` gives each formulation's
  MACs and elements for the cost model (`vtc.budget.choose`); its nodes are counted by
  emitting it (`vtc.methods.costs`).
* **Eager reference** — `eager` applies the same reduction to torch tensors.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from vtc.budget import GATHER, BudgetError, Geometry, LayerPlan

if TYPE_CHECKING:
    import onnx_ir as ir
    from torch import Tensor

    from vtc.passes.emit import Emitter
    from vtc.passes.graph import Block


def _refuse(key: str, value: Any, annotation: Any) -> None:
    """ValueError when `value` is a yes/no or a text where `annotation` takes only numbers
    (looking into list items and dict values)."""
    origin, args = get_origin(annotation), get_args(annotation)
    options = args if origin in (Union, UnionType) else (annotation,)
    if isinstance(value, list | dict):
        for o in options:
            inner = get_args(o)
            if isinstance(value, list) and get_origin(o) is list and inner:
                for v in value:
                    _refuse(key, v, inner[0])
            elif isinstance(value, dict) and get_origin(o) is dict and len(inner) == 2:
                for k, v in value.items():
                    _refuse(f"{key}.{k}", v, inner[1])
        return
    plain = {o for o in options if get_origin(o) is None}
    if not plain & {int, float} or plain & {str, bool, Any}:
        return
    if isinstance(value, bool):
        raise ValueError(f"{key}={str(value).lower()} is a yes/no value; {key} takes a number")
    if isinstance(value, str):
        try:
            float(value)
            hint = " (write it without quotes)"
        except ValueError:
            hint = ""
        raise ValueError(f"{key}={value!r} is text; {key} takes a number{hint}")


def refuse_bools(model: type[BaseModel], data: Any) -> Any:
    """A YAML yes/no (true, false, on, off) or a quoted text ('8') given to a number field
    is an error, not the 1, 0 or 8 pydantic would make of it (`--set tome.r=true`,
    `samples: '8'`); list items and dict values too (`layers: [true]`)."""
    if isinstance(data, dict):
        for name, field in model.model_fields.items():
            key = field.alias or name
            if key in data or name in data:
                _refuse(key, data.get(key, data.get(name)), field.annotation)
    return data


class MethodConfig(BaseModel):
    """Base of every method's recipe section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        return refuse_bools(cls, data)

    layers: list[int] | None = None  # 0-based blocks this method acts in; null: every block

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        bad = [i for i in v if i < 0]
        if bad:
            raise ValueError(f"layers {bad} are negative; give 0-based block indices")
        if len(set(v)) != len(v):
            raise ValueError(f"layers {v} name a block twice")
        return sorted(v)


Formulation = Literal["auto", "gather", "compact"]


class SiteConfig(MethodConfig):
    """Base of the sections of methods that reduce inside encoder blocks: `formulation`
    forces how the graph writes every site of the method (auto: the cheaper one by the
    budget's cost model, `vtc.budget.choose`)."""

    formulation: Formulation = "auto"


@dataclass(frozen=True)
class BlockStep:
    """What a method does in one block: tokens out and its frozen parameters."""

    tokens_out: int
    params: dict[str, Any]


@dataclass
class Site:
    """One block to rewrite in the ONNX graph.

    x: the residual stream after the attention residual add, `[B, N, C]`.
    size: how many original tokens each token stands for, `[B, N, 1]`, or None while
        every size is 1 (no merge has happened yet).
    track: the caller wants `slots` (to copy merged tokens back to the full grid).
    formulation: how to write it (`Method.formulations`; the plan's, by default).
    """

    em: Emitter
    block: Block
    x: ir.Value
    size: ir.Value | None
    plan: LayerPlan
    protected: int
    track: bool
    formulation: str = ""

    def __post_init__(self) -> None:
        self.formulation = self.formulation or self.plan.formulation or GATHER


@dataclass
class SiteOut:
    """The rewrite of one block: x' `[B, N', C]`, sizes `[B, N', 1]` (None when the
    method tracks none) and slots `[B, N]` float (the slot in x' of every input
    token), present only when the site asked for them and the method can give them."""

    x: ir.Value
    size: ir.Value | None
    slots: ir.Value | None = None


class Method(abc.ABC):
    """Base class of a reduction method (see the module docstring)."""

    name: ClassVar[str] = ""
    config: ClassVar[type[MethodConfig]] = MethodConfig
    summary: ClassVar[str] = ""
    # True for a size-weighted merge: tokens carry sizes, and merged tokens can be copied
    # back to the full grid (unmerge). False for a prune: dropped tokens are gone.
    merges: ClassVar[bool] = False
    # the shipped recipe `vtc sweep --recipe NAME` starts from
    recipe: ClassVar[str] = ""
    # settings of which a section gives one: setting one (a sweep) clears the other
    exclusive: ClassVar[dict[str, str]] = {}
    # ops the method's pass emits beyond the portable list of `vtc.passes.emit` (each
    # one justified in the method's docstring: ONNX Runtime and TensorRT must run it)
    extra_ops: ClassVar[frozenset[str]] = frozenset()
    # where the method cuts tokens: "encoder" (a rewrite of encoder blocks, the graph
    # passes) or, for vision-language models, "projector" (between the vision tower and
    # the language model) or "lm" (inside the language model's prefill): `methods.cut`
    site: ClassVar[str] = "encoder"
    # the ways `emit` can write a site (vtc.budget: GATHER, COMPACT)
    formulations: ClassVar[tuple[str, ...]] = (GATHER,)

    # ---- schedule --------------------------------------------------------------------
    def blocks(self, cfg: MethodConfig, geo: Geometry) -> list[int]:
        """The blocks this method acts in (BudgetError when outside the model)."""
        if cfg.layers is None:
            return list(range(geo.layers))
        bad = [i for i in cfg.layers if i >= geo.layers]
        if bad:
            raise BudgetError(f"{self.name}.layers {bad} are outside 0..{geo.layers - 1} "
                              "(0-based block indices)")
        return list(cfg.layers)

    def resolve(self, cfg: MethodConfig, geo: Geometry,
                ratio_of: Callable[[MethodConfig], float]) -> MethodConfig:
        """The section with any target (e.g. a FLOPs ratio) solved into plain values.
        `ratio_of(cfg)` is the FLOPs ratio of the whole budget with this section."""
        return cfg

    @abc.abstractmethod
    def plan_block(self, cfg: MethodConfig, geo: Geometry, block: int, nth: int,
                   tokens: int) -> BlockStep | None:
        """The reduction in `block` (the `nth` of this method's blocks, from 0) when
        `tokens` enter it; None when it keeps every token."""

    def token_score(self, cfg: MethodConfig, geo: Geometry) -> str | None:
        """For a method that ranks tokens by attention: the score it ranks them by (e.g.
        EViT's ``cls`` or ``mean``), recorded in the report; None for other methods.
        Raises BudgetError when the score cannot apply to this model."""
        return None

    def attn_bias(self, cfg: MethodConfig) -> bool:
        """True when the blocks after this method's merges add log(size) to their
        attention logits (proportional attention)."""
        return False

    def overhead(self, plan: LayerPlan, geo: Geometry) -> int:
        """MACs per image of the method's own bookkeeping in one block."""
        return 0

    def work(self, plan: LayerPlan, geo: Geometry, formulation: str, sized: bool
             ) -> tuple[int, int]:
        """(MatMul MACs, elements written) per image of one site in `formulation`, with
        sizes flowing in when `sized` (the cost model's `SiteCost` less its nodes)."""
        return self.overhead(plan, geo), plan.tokens_out * geo.width

    def formulation(self, cfg: MethodConfig) -> str:
        """The formulation the section forces ("auto": none)."""
        return str(getattr(cfg, "formulation", "auto"))

    # ---- the two implementations ---------------------------------------------------------
    @abc.abstractmethod
    def emit(self, site: Site) -> SiteOut:
        """Write the reduction of one block into the graph (nodes go to `site.em`)."""

    @abc.abstractmethod
    def eager(self, x: Tensor, sizes: Tensor | None, keys: Tensor, probs: Tensor,
              plan: LayerPlan, protected: int) -> tuple[Tensor, Tensor | None]:
        """The same reduction on torch tensors.

        x `[B, N, C]` (C may carry extra channels that ride along: the eager unmerge
        puts a one-hot source map there), sizes `[B, N, 1]` or None, keys
        `[B, H, N, D]`, probs `[B, H, N, N]` → (x' `[B, N', C]`, sizes' or None)."""
