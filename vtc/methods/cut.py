"""Cuts of visual tokens outside the encoder blocks, for vision-language models.

A LLaVA-style model (vision tower → projector → language model) can lose visual
tokens in three places. The first is the encoder itself (tome, evit: graph passes
over the vision tower's blocks). The other two have no encoder block to rewrite:

* ``site = "projector"``: between the vision tower and the language model
  (`visionzip`): the image's tokens ``[B, T, C]`` become ``[B, K, C]``;
* ``site = "lm"``: inside the language model's prefill (`fastv`, `pyramid`, `exit`):
  from layer L on the sequence keeps only R of the visual tokens (a method may cut at
  several layers: PyramidDrop's stages).

Such a method is one registered module: its recipe section, its static schedule
(`plan_cut` → a `CutStep`), and its implementations, which the VLM build and the
eager reference call through this interface without naming the method:

* a ``projector`` cut gives `tower`: a torch op on the tower's output (`TowerOutput`:
  the tokens, one importance score per token, head-averaged keys and how many leading
  tokens are protected), traced into vision.onnx by the family's tower modules
  (`vtc.vlm.modules`, `vtc.vlm.qwen_vision`) and called by the eager reference between
  Hugging Face's modules. The score is the family's: LLaVA's CLIP tower gives the CLS
  token's attention, Qwen2.5-VL's (no CLS) the attention each merged token receives in
  its last full-attention layer, so the cut itself knows no tower;
* an ``lm`` cut gives `lm_stage`, what its reference code does at the cut (whose
  attention ranks the tokens, whether the kept ones keep their positions:
  `vtc.passes.decoder_cuts.CutStage`), which the decoder's cut pass writes into the
  graph the standard exporter wrote, and `keep`, the same selection on torch tensors for
  the eager reference, which drives Hugging Face's own decoder layers.

It claims no encoder block, so the encoder planner never sees it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator

from vtc.budget import BudgetError, Geometry, LayerPlan
from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteOut

if TYPE_CHECKING:
    from torch import Tensor

    from vtc.passes.decoder_cuts import CutStage


@dataclass(frozen=True)
class TowerOutput:
    """What a vision tower hands a projector cut (shapes for B images, T tokens).

    features `[B, T, C]`: the tokens the projector reads, protected ones first;
    score `[B, T - protected]`: importance of every unprotected token (higher is more
    important), as the family defines it; keys `[B, T, D]`: the scoring layer's keys
    averaged over heads (what contextual merges compare); protected: leading tokens
    always kept (CLIP's CLS: 1; a tower without CLS: 0)."""

    features: Tensor
    score: Tensor
    keys: Tensor
    protected: int


@dataclass(frozen=True)
class CutStep:
    """One cut of a bundle's static budget.

    method, site: the registered method and where it acts ("projector" | "lm");
    tokens_in / tokens_out: visual tokens per image reaching it and leaving it;
    layer: for an lm cut, the first LM layer that reads the shorter sequence (its
    selection reads layer ``layer - 1``'s attention); params: the frozen parameters its
    implementations read (e.g. ``{"dominant": 54, "contextual": 10}``)."""

    method: str
    site: str
    tokens_in: int
    tokens_out: int
    layer: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.tokens_in - self.tokens_out


class CutConfig(MethodConfig):
    """Base of a cut's recipe section: `layers` (encoder blocks) does not apply."""

    @field_validator("layers")
    @classmethod
    def _no_layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            raise ValueError("this cut acts outside the encoder blocks, so it takes no "
                             "layers; drop it (fastv.layer picks the language-model layer)")
        return v


class VisualCut(Method):
    """Base of the cuts that act outside encoder blocks (module docstring)."""

    site: ClassVar[str] = "projector"

    def blocks(self, cfg: MethodConfig, geo: Geometry) -> list[int]:
        return []  # no encoder block

    def plan_block(self, cfg: MethodConfig, geo: Geometry, block: int, nth: int,
                   tokens: int) -> BlockStep | None:
        return None

    def emit(self, site: Site) -> SiteOut:
        raise TypeError(f"{self.name} cuts visual tokens outside the encoder blocks; "
                        "it has no encoder pass")

    def eager(self, x: Tensor, sizes: Tensor | None, keys: Tensor, probs: Tensor,
              plan: LayerPlan, protected: int) -> tuple[Tensor, Tensor | None]:
        raise TypeError(f"{self.name} cuts visual tokens outside the encoder blocks")

    @abc.abstractmethod
    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        """Visual tokens left by the cut when `visual` reach it (BudgetError when the
        section asks for more than there are)."""

    @abc.abstractmethod
    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        """The cut when `visual` tokens reach it, in an LM of `lm_layers` layers
        (BudgetError naming the misfit). For a projector cut `visual` counts the tower's
        tokens with CLS."""

    def plan_cuts(self, cfg: MethodConfig, visual: int, lm_layers: int) -> list[CutStep]:
        """Every cut of the section, in layer order (one for most methods; PyramidDrop
        cuts at each stage), each selecting among what the one before it left."""
        return [self.plan_cut(cfg, visual, lm_layers)]

    # ---- projector cuts ------------------------------------------------------------------
    def tower(self, step: CutStep, out: TowerOutput) -> tuple[Tensor, Tensor]:
        """The tower's output → the tokens the projector reads, `[B, step.tokens_out, C]`,
        and for each the index `[B, step.tokens_out]` (int64, into the T tokens) of the
        token whose place it takes: a kept token's own, a merged token's target's (the
        family maps it to a position, e.g. Qwen2.5-VL's M-RoPE (t, h, w))."""
        raise TypeError(f"{self.name} does not cut at the projector")

    # ---- lm cuts -------------------------------------------------------------------------
    def lm_stage(self, step: CutStep) -> CutStage:
        """What the decoder's cut pass writes for this step: its layer and kept count,
        whose attention scores the tokens (``previous``: layer L-1's; ``own``: layer L's
        projections before it runs; ``none``) and whether the kept tokens keep their
        rotary positions (``keep``) or are renumbered (``compact``)."""
        raise TypeError(f"{self.name} does not cut inside the language model")

    def keep(self, step: CutStep, probs: Tensor | None, image_start: int) -> Tensor:
        """The eager selection: the attention probabilities `lm_stage` names as the
        score (`[B, H, Q, S]`, the last query row last; zeros `[B, 1, 1, S]` for
        ``none``), the image's `step.tokens_in` tokens at ``image_start`` → the positions
        that stay, ascending, `[B, S - step.dropped]`."""
        raise TypeError(f"{self.name} does not cut inside the language model")


def cls_score(attn: Tensor, protected: int = 1) -> Tensor:
    """A CLS tower's token score (VisionZip's reference code): attention probabilities
    ``[B, H, T, T]`` summed over heads, the CLS row over the unprotected tokens →
    ``[B, T - protected]``."""
    return attn.sum(dim=1)[:, 0, protected:]


def check_positive(name: str, value: int) -> None:
    if value < 0:
        raise BudgetError(f"{name} is {value}; give a count ≥ 0")


def get_cut(name: str) -> VisualCut:
    """The registered cut called `name` (TypeError for an encoder method)."""
    from vtc.methods.registry import get

    m = get(name)
    if not isinstance(m, VisualCut):
        raise TypeError(f"{name} is an encoder method, not a cut outside the encoder")
    return m
