"""Static visual-token exit: after layer L of the language model's prefill no visual
token remains in the sequence (DyVTE's finding, Wu et al. 2025, "Accelerating
Multimodal Large Language Models via Dynamic Visual-Token Exit and the Empirical
Findings", applied with a fixed L; read from the authors' reference code,
DoubtedSteam/DyVTE ``llava/model/language_model/modeling_llama.py``).

Recipe section::

    exit:
      layer: 15   # layers 0..15 see the image; layers 16.. see only the text

What the reference does once its gate fires after layer ``idx`` (DyVTE decides ``idx``
per sample with a small hyper-network on the text tokens' states; vtc fixes it per
bundle): it cuts the image's tokens out of the hidden states, the position ids and the
attention mask, so the text tokens keep their **original positions**, and every later
layer (and its cache) holds the text only. No score is needed: every visual token goes.

Graph: `vtc.passes.decoder_cuts` with one stage at layer L + 1 (score ``none``,
positions ``keep``)::

    visual[B,S] (image_start ≤ s < image_start + V) ─► Where(visual, 0, 2) ─► TopK(S - V)
        ─► sort ─► idx[B, S-V] ─► GatherElements(layer L+1's inputs) ─► layers L+1..
        (rotary at the text tokens' original positions; caches V shorter)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from vtc.budget import BudgetError
from vtc.methods.base import MethodConfig
from vtc.methods.cut import CutConfig, CutStep, VisualCut
from vtc.methods.fastv import keep_indices
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor

    from vtc.passes.decoder_cuts import CutStage


class ExitConfig(CutConfig):
    layer: int = 15  # the last layer that sees the visual tokens

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"exit.layer is {v}; give the 0-based layer after which the "
                             "visual tokens leave")
        return v


@register
class Exit(VisualCut):
    """Remove every visual token after a fixed language-model layer."""

    name = "exit"
    config = ExitConfig
    summary = "visual-token exit (DyVTE, static L): no visual token after LM layer L (VLMs)"
    recipe = "llava-exit"
    site: ClassVar[str] = "lm"

    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        return 0

    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        assert isinstance(cfg, ExitConfig)
        if cfg.layer >= lm_layers - 1:
            raise BudgetError(f"exit.layer is {cfg.layer} but the language model has "
                              f"{lm_layers} layers (0..{lm_layers - 1}): an exit after its "
                              f"last layer removes nothing; give 0 ≤ L < {lm_layers - 1}")
        return CutStep(self.name, self.site, visual, 0, cfg.layer + 1, {"layer": cfg.layer})

    def lm_stage(self, step: CutStep) -> CutStage:
        from vtc.passes.decoder_cuts import CutStage

        assert step.layer is not None
        return CutStage(step.layer, 0, score="none", positions="keep")

    def keep(self, step: CutStep, probs: Tensor | None, image_start: int) -> Tensor:
        import torch

        assert probs is not None  # score "none": zeros [B, 1, 1, S], only S counts
        s = probs.shape[-1]
        p = torch.arange(s)[None]
        span = (p >= image_start) & (p < image_start + step.tokens_in)
        return keep_indices(torch.zeros(1, s), span, step.tokens_in, 0)
