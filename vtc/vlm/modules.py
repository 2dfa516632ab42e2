"""vtc's exportable LLaVA vision modules, traced from torch (the language model is not
here: onnxruntime-genai's model builder exports it and vtc's decoder passes cut it,
`vtc.vlm.decoder`).

Each module reads the Hugging Face model's weights and submodules but writes the tower's
attention and the cuts itself, with static shapes where the budget fixes them:

* `VisionEncoder`: ``pixel_values[B, 3, H, W]`` → ``image_features[B, K, D]``: the CLIP
  tower up to its feature layer F (encoder cuts — tome, evit — by their eager ops in
  blocks 0..F-1), the feature selection (``default`` drops CLS), the projector cut
  (VisionZip) when the recipe has one, the projector.
* `TowerBody` / `TowerTail`: the same graph in two parts, so that the encoder passes
  rewrite the body as they rewrite any encoder.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from vtc import methods
from vtc.budget import NONE
from vtc.exporter.clip import encoder_blocks
from vtc.exporter.eager import attention as vit_attention
from vtc.methods.cut import TowerOutput, cls_score, get_cut

from .llava import VlmGeometry
from .plan import Cuts


class VisionEncoder(nn.Module):
    """``pixel_values[B, 3, H, W]`` → ``image_embeds[B, K, D]`` (module docstring)."""

    def __init__(self, model: nn.Module, geo: VlmGeometry, cuts: Cuts) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower
        self.projector = m.model.multi_modal_projector
        self.parts = encoder_blocks(self.tower)[: geo.feature_layer + 1]
        self.geo, self.cuts = geo, cuts

    def features(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer F's output ``[B, T', C]``, its probabilities ``[B, H, T', T']`` and
        keys averaged over heads ``[B, T', hd]`` (T' after the encoder cuts)."""
        x = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        budget = self.cuts.encoder
        sizes: Tensor | None = None
        *body, last = self.parts
        for i, parts in enumerate(body):
            plan = budget.layers[i] if budget is not None else None
            log_s = sizes.log() if sizes is not None and plan is not None and plan.attn_bias \
                else None
            out, keys, probs = vit_attention(parts, parts.norm1(x), log_s)
            x = x + out
            if plan is not None and plan.method != NONE:
                x, sizes = methods.get(plan.method).eager(x, sizes, keys, probs, plan,
                                                          budget.protected)  # type: ignore[union-attr]
            x = x + parts.mlp(parts.norm2(x))
        bias = budget is not None and sizes is not None and any(
            lp.attn_bias for lp in budget.layers)
        out, keys, probs = vit_attention(last, last.norm1(x), sizes.log() if bias and
                                         sizes is not None else None)
        x = x + out
        x = x + last.mlp(last.norm2(x))
        return x, probs, keys.mean(dim=1)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return to_lm(self.projector, self.geo, self.cuts, *self.features(pixel_values))


def to_lm(projector: nn.Module, geo: VlmGeometry, cuts: Cuts, x: Tensor, probs: Tensor,
          keys: Tensor) -> Tensor:
    """Layer F's output ``[B, T', C]`` (its probabilities and head-averaged keys for a
    projector cut) → the LM's visual tokens ``[B, K, D]``: the projector cut (VisionZip)
    by its method's `tower` op, or the strategy's selection (``default`` drops CLS),
    then the projector."""
    step = cuts.projector
    if step is not None:
        # the reference code's score: layer F's CLS row, summed over heads
        out = TowerOutput(x, cls_score(probs), keys, protected=1)
        x = get_cut(step.method).tower(step, out)[0]
    elif geo.strategy == "default":
        x = x[:, 1:]
    return projector(x)  # type: ignore[no-any-return]


class TowerBody(nn.Module):
    """``pixel_values[B, 3, H, W]`` → ``hidden[B, T, C]`` after tower blocks 0..F-1, uncut:
    the graph the encoder passes (tome, evit) rewrite, as they rewrite any encoder."""

    def __init__(self, model: nn.Module, geo: VlmGeometry) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower
        self.parts = encoder_blocks(self.tower)[: geo.feature_layer]

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        for parts in self.parts:
            x = x + vit_attention(parts, parts.norm1(x), None)[0]
            x = x + parts.mlp(parts.norm2(x))
        return x  # type: ignore[no-any-return]


class TowerTail(nn.Module):
    """``hidden[B, T', C]`` (+ ``token_sizes[B, T']`` after a merge with proportional
    attention) → ``image_embeds[B, K, D]``: layer F, the feature selection, VisionZip,
    the projector. Joined to the rewritten `TowerBody` into one vision graph."""

    def __init__(self, model: nn.Module, geo: VlmGeometry, cuts: Cuts, bias: bool) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower  # registers the parameters BlockParts points at
        self.last = encoder_blocks(self.tower)[geo.feature_layer]
        self.projector = m.model.multi_modal_projector
        self.geo, self.cuts, self.bias = geo, cuts, bias

    def forward(self, hidden: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        last, x = self.last, hidden
        log_s = token_sizes[..., None].log() if self.bias and token_sizes is not None else None
        out, keys, probs = vit_attention(last, last.norm1(x), log_s)
        x = x + out
        x = x + last.mlp(last.norm2(x))
        return to_lm(self.projector, self.geo, self.cuts, x, probs, keys.mean(dim=1))
