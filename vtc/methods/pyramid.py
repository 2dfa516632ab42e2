"""PyramidDrop: drop visual tokens in stages inside the language model's prefill,
keeping fewer at each stage (Xing et al., 2024; read from the authors' reference code,
Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py``: ``pdrop_forward`` and
``pdrop_rank_drop``, inference path).

Recipe section::

    pyramid:
      stages: [8, 16, 24]   # the first layer of each new stage (the authors' layer_list)
      keep: 0.5             # λ: stage s keeps int(V · λ^(s+1)) of the V visual tokens
      # keep: [0.5, 0.25, 0.125]  # or the kept fraction of V after each stage (the
      #                           # authors' image_token_ratio_list past its leading 1.0)
      positions: compact    # compact: renumber after each stage, as the reference code;
                            # keep: the kept tokens keep theirs (as FastV), the only choice
                            # on Qwen2.5-VL, whose 3-D M-RoPE positions have no renumbering

What the reference does at inference, and vtc with it (V: the visual tokens the LM reads;
its ``image_token_ratio_list`` is ``[1, r_1, …, r_n]``):

1. after layer ``L_s - 1`` runs (``rank_layer = layer_idx + 1`` in ``layer_list``), on
   the prompt only (not the one-token decoding steps), layer ``L_s``'s own
   ``input_layernorm``, ``q_proj`` and ``k_proj`` are applied to the hidden states, with
   rotary at the current position ids;
2. the **last instruction token**'s query (the prompt's last token) attends to every
   key under the causal mask: softmax in fp32, averaged over heads, restricted to the
   ``int(V · r_{s-1})`` image tokens at the image's start;
3. the top ``int(V · r_s)`` of them are kept **in their original order**, with the text
   before and after the image; every other visual token is gone from layer ``L_s`` on;
4. the position ids are **renumbered** 0, 1, … over the kept sequence (and in decoding,
   lowered by the tokens the stages dropped): positions are compacted, not kept
   (FastV and DyVTE keep them).

The authors' code multiplies ``q·kᵀ`` heads with key heads one to one (their models
have as many key/value heads as heads); with grouped-query attention vtc's head h reads
key/value head h // (H / Hkv), as the attention itself does. The reference computes
the ranking layer's q/k/v projections on every token and then drops; vtc's graph does
the same (it gathers the kept rows after layer ``L_s``'s projections), so that layer's
projections run on the tokens before its cut (counted in the FLOPs).

MustDrop's LM-stage schedule (Liu et al., 2024, liuting20/MustDrop: pruning after layers
2, 6, 10 and 14 of LLaVA-1.5) is the recipe ``llava-mustdrop`` of this method: its
thresholded dual-attention filter (a count that varies by image) becomes static kept
fractions and PyramidDrop's ranking, and its vision-stage merge and decoding-stage cache
policy are not part of it (vtc has no such static cut yet).

Graph: `vtc.passes.decoder_cuts`, one stage per layer (score ``own``, positions
``compact``)::

    SkipSimplifiedLN_L ─► qkv_L[B, S, ·] ─► q of the last token, k (rotary at 0..S-1)
        ─► softmax ─► ReduceMean(H) ─► score[B,S] ─► Where(visual, score, 2)
        ─► TopK(S - V_s + R_s) ─► sort ─► idx ─► GatherElements(qkv_L, residual)
        ─► GQA_L.. (cache ΣD shorter: its own rotary is the compacted position)
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import field_validator, model_validator

from vtc.budget import BudgetError
from vtc.methods.base import MethodConfig
from vtc.methods.cut import CutConfig, CutStep, VisualCut
from vtc.methods.fastv import last_query_keep
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor

    from vtc.passes.decoder_cuts import CutStage


class PyramidConfig(CutConfig):
    stages: list[int] = [8, 16, 24]  # noqa: RUF012 (pydantic copies defaults)
    keep: float | list[float] = 0.5
    positions: Literal["compact", "keep"] = "compact"

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("pyramid.stages is empty; give the first layer of each stage, "
                             "e.g. [8, 16, 24]")
        if v[0] < 1:
            raise ValueError(f"pyramid.stages starts at {v[0]}; a stage ranks with its own "
                             "layer after the one before it ran, so give layers ≥ 1")
        if any(b <= a for a, b in pairwise(v)):
            raise ValueError(f"pyramid.stages {v} are not increasing; give each stage a "
                             "later layer than the one before")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: float | list[float]) -> float | list[float]:
        ratios = v if isinstance(v, list) else [v]
        bad = [r for r in ratios if not 0.0 < r <= 1.0]
        if bad or not ratios:
            raise ValueError(f"pyramid.keep {v} is not in (0, 1]; give the fraction kept at "
                             "each stage (one value: the same λ each time)")
        if isinstance(v, list) and any(b > a for a, b in pairwise(v)):
            raise ValueError(f"pyramid.keep {v} grows; a list gives the kept fraction of "
                             "the visual tokens after each stage, which cannot grow")
        return v

    @model_validator(mode="after")
    def _one_ratio_per_stage(self) -> PyramidConfig:
        if isinstance(self.keep, list) and len(self.keep) != len(self.stages):
            raise ValueError(f"pyramid.keep lists {len(self.keep)} fractions for "
                             f"{len(self.stages)} stages; give one per stage (or one λ)")
        return self

    def ratios(self) -> list[float]:
        """The kept fraction of V after each stage (the authors' ratio list past 1.0)."""
        if isinstance(self.keep, list):
            return list(self.keep)
        return [self.keep ** (s + 1) for s in range(len(self.stages))]


@register
class Pyramid(VisualCut):
    """Drop visual tokens in stages inside the language model's prefill."""

    name = "pyramid"
    config = PyramidConfig
    summary = "PyramidDrop: drop visual tokens in stages inside the LM (VLMs)"
    recipe = "llava-pyramid"
    site: ClassVar[str] = "lm"

    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        assert isinstance(cfg, PyramidConfig)
        return int(visual * cfg.ratios()[-1])

    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        return self.plan_cuts(cfg, visual, lm_layers)[0]

    def plan_cuts(self, cfg: MethodConfig, visual: int, lm_layers: int) -> list[CutStep]:
        assert isinstance(cfg, PyramidConfig)
        last = cfg.stages[-1]
        if last >= lm_layers:
            raise BudgetError(f"pyramid.stages reach layer {last} but the language model has "
                              f"{lm_layers} layers (0..{lm_layers - 1}); give 1 ≤ L < "
                              f"{lm_layers}")
        steps, reach = [], visual
        for s, (layer, ratio) in enumerate(zip(cfg.stages, cfg.ratios(), strict=True)):
            kept = int(visual * ratio)  # the reference's int(): of V, not of what reaches
            steps.append(CutStep(self.name, self.site, reach, kept, layer,
                                 {"stage": s, "layer": layer, "keep": kept,
                                  "ratio": round(ratio, 6), "positions": cfg.positions}))
            reach = kept
        return steps

    def lm_stage(self, step: CutStep) -> CutStage:
        from vtc.passes.decoder_cuts import CutStage

        assert step.layer is not None
        return CutStage(step.layer, step.tokens_out, score="own",
                        positions=step.params.get("positions", "compact"))

    def keep(self, step: CutStep, probs: Tensor | None, image_start: int) -> Tensor:
        if probs is None:
            raise BudgetError("pyramid ranks with the cut layer's own attention")
        return last_query_keep(probs, image_start, step.tokens_in, step.tokens_out)
