"""FastV: after layer L of the language model's prefill, keep the R visual tokens the
last prompt token attends to most (Chen et al., ECCV 2024; read from the authors'
reference code, pkunlp-icler/FastV, the "inplace" Llama forward with a KV cache).

Recipe section::

    fastv:
      layer: 2      # L: layers 0..L-1 see every token; layers L.. see the kept ones
      keep: 0.5     # fraction of the visual tokens kept (R = round(V · keep))
      # tokens: 288 # or an absolute R (set keep: null)

What the reference does, and vtc with it: at layer L it takes layer L-1's attention
probabilities, averages them over heads, reads the row of the **last** token of the
prompt, restricted to the V visual positions, keeps the top R visual positions, and
drops the others from the hidden states for the remaining layers; the tokens that stay
keep their **original position ids** (rotary positions are not renumbered), and the
text tokens all stay. Decoding then attends to a key/value cache that, from layer L on,
is V - R entries shorter.

The decoder's graph pass is `vtc.passes.decoder_cuts` with this cut's stage (score
``previous``: layer L-1's attention; positions ``keep``)::

    q_{L-1}[B,1,H,hd], k_{L-1}[B,S,Hkv,hd] (rotary at the tokens' positions) ─► softmax
        ─► ReduceMean(H) ─► score[B,S]
    visual[B,S] (image_start ≤ s < image_start + V) ─► Where(visual, score, 2) ─► TopK(S-V+R)
        ─► sort ─► idx[B, S-V+R] ─► GatherElements(layer L's inputs) ─► layers L..
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator, model_validator

from vtc.budget import BudgetError
from vtc.methods.base import MethodConfig
from vtc.methods.cut import CutConfig, CutStep, VisualCut
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor

    from vtc.passes.decoder_cuts import CutStage


class FastVConfig(CutConfig):
    layer: int = 2
    keep: float | None = 0.5
    tokens: int | None = None  # absolute R (set keep: null)

    @field_validator("layer")
    @classmethod
    def _layer(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"fastv.layer is {v}; the cut reads layer L-1's attention, so "
                             "give L ≥ 1")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"fastv.keep is {v}; give a fraction in (0, 1]")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> FastVConfig:
        if (self.keep is None) == (self.tokens is None):
            raise ValueError("fastv takes one of keep (a fraction) and tokens (a count); "
                             "set the other to null")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"fastv.tokens is {self.tokens}; give ≥ 1")
        return self


def keep_indices(score: Tensor, visual: Tensor, visual_count: int, keep: int) -> Tensor:
    """Positions that stay, ascending.

    score `[B, S]` (the last token's attention, averaged over heads), visual `[B, S]`
    bool (exactly `visual_count` True per row) → `[B, S - visual_count + keep]` int64.
    Non-visual positions score 2 (probabilities are ≤ 1), so they always stay.
    """
    import torch

    s = score.shape[1]
    ranked = torch.where(visual, score, torch.full_like(score, 2.0))
    idx = torch.topk(ranked, s - visual_count + keep, dim=-1).indices
    return idx.sort(dim=-1).values


@register
class FastV(VisualCut):
    """Prune visual tokens inside the language model's prefill."""

    name = "fastv"
    config = FastVConfig
    summary = "FastV: keep the visual tokens the last prompt token attends to (VLMs)"
    recipe = "llava-fastv"
    site: ClassVar[str] = "lm"
    exclusive: ClassVar[dict[str, str]] = {"keep": "tokens", "tokens": "keep"}

    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        assert isinstance(cfg, FastVConfig)
        r = cfg.tokens if cfg.tokens is not None else round(visual * (cfg.keep or 1.0))
        if r > visual:
            raise BudgetError(f"fastv.tokens is {r} but the language model reads {visual} "
                              "visual tokens; lower it")
        return max(1, r)

    def check_layer(self, cfg: MethodConfig, layers: int) -> None:
        assert isinstance(cfg, FastVConfig)
        if cfg.layer >= layers:
            raise BudgetError(f"fastv.layer is {cfg.layer} but the language model has "
                              f"{layers} layers (0..{layers - 1}); give 1 ≤ L < {layers}")

    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        assert isinstance(cfg, FastVConfig)
        self.check_layer(cfg, lm_layers)
        kept = self.tokens_after(cfg, visual)
        return CutStep(self.name, self.site, visual, kept, cfg.layer,
                       {"layer": cfg.layer, "keep": kept})

    def lm_stage(self, step: CutStep) -> CutStage:
        from vtc.passes.decoder_cuts import CutStage

        assert step.layer is not None
        return CutStage(step.layer, step.tokens_out, score="previous", positions="keep")

    def keep(self, step: CutStep, probs: Tensor | None, image_start: int) -> Tensor:
        assert probs is not None
        return last_query_keep(probs, image_start, step.tokens_in, step.tokens_out)


def last_query_keep(probs: Tensor, image_start: int, visual: int, keep: int) -> Tensor:
    """probs `[B, H, Q, S]` → the positions that stay `[B, S - visual + keep]`: the last
    query's row averaged over heads ranks the `visual` tokens at `image_start`."""
    import torch

    row = probs[:, :, -1].float().mean(dim=1)                               # [B, S]
    p = torch.arange(row.shape[1])[None]
    span = (p >= image_start) & (p < image_start + visual)
    return keep_indices(row, span, visual, keep)
