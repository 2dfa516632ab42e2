"""Cuts of visual tokens outside the encoder blocks, for vision-language models.

A LLaVA-style model (vision tower → projector → language model) can lose visual
tokens in three places. The first is the encoder itself (tome, evit: graph passes
over the vision tower's blocks). The other two have no encoder block to rewrite:

* ``site = "projector"``: between the vision tower and the language model
  (`visionzip`): the image's tokens ``[B, T, C]`` become ``[B, K, C]``;
* ``site = "lm"``: inside the language model's prefill (`fastv`): after layer L the
  sequence keeps only R of the visual tokens.

Such a method is still one registered module (its recipe section, its static
schedule — `tokens_after` — and its op), but its op is a torch function that vtc's
own LLaVA modules (`vtc.vlm`) call where the cut sits; it is traced into the ONNX
graphs at export, and the eager reference calls the same op between Hugging Face's
modules. It claims no encoder block, so the encoder planner never sees it.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from vtc.budget import BudgetError, Geometry, LayerPlan
from vtc.methods.base import BlockStep, Method, MethodConfig, Site, SiteOut

if TYPE_CHECKING:
    from torch import Tensor


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


def check_positive(name: str, value: int) -> None:
    if value < 0:
        raise BudgetError(f"{name} is {value}; give a count ≥ 0")
