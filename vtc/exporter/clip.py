"""CLIP (HF ``model_type`` ``"clip"`` or ``"clip_vision_model"``).

Token layout entering block 0: ``[CLS, patches...]`` after ``pre_layrnorm``; CLS is
protected. What the vision graph outputs depends on the checkpoint:

* a vision-tower checkpoint (``clip_vision_model``, a ``CLIPVisionConfig``): HF's
  ``CLIPVisionModel``, output ``pooler_output = post_layernorm(CLS)`` (before any
  projection);
* a full ``CLIPModel`` checkpoint (``clip``, a config with ``text_config``): the whole
  ``CLIPModel`` is loaded; the vision graph is its vision tower with the projection
  (HF's ``CLIPVisionModelWithProjection``, sharing the modules), output ``image_embeds
  = visual_projection(post_layernorm(CLS))`` ``[B, projection_dim]``, unnormalised: the
  image side of zero-shot classification and retrieval. The text tower goes into the
  bundle beside it (`vtc.exporter.clip_text`); `CLIPFamily.image_text(tower)` hands the
  full model to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

from ._hf import from_pretrained
from .registry import BlockParts, Family, register_family

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_config(config: Any) -> Any:
    """The vision config of a full CLIP/SigLIP config, or the config itself."""
    return getattr(config, "vision_config", None) or config


def encoder_blocks(model: Any) -> list[BlockParts]:
    """Blocks of a CLIP/SigLIP-style encoder (``encoder.layers[i]`` with
    ``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``)."""
    parts = []
    for layer in model.encoder.layers:
        att = layer.self_attn
        parts.append(
            BlockParts(
                norm1=layer.layer_norm1,
                q=att.q_proj,
                k=att.k_proj,
                v=att.v_proj,
                o=att.out_proj,
                norm2=layer.layer_norm2,
                mlp=layer.mlp,
                ls1=None,
                ls2=None,
                num_heads=int(att.num_heads),
                scale=float(att.scale),
            )
        )
    return parts


class VisionTowerFamily(Family):
    """Shared by CLIP and SigLIP vision towers: encoders (no classifier) whose blocks
    are ``encoder_blocks`` and whose output is HF's ``pooler_output``.
    Subclasses set ``tower`` (the HF class) and ``cls_tokens``."""

    tower: ClassVar[Any]
    cls_tokens: ClassVar[int]

    def checked(self, model: Any) -> nn.Module:
        """Refuse towers this family cannot run (default: accept)."""
        return model  # type: ignore[no-any-return]

    def build(self, config: Any) -> nn.Module:
        model: Any = self.tower._from_config(vision_config(config), attn_implementation="sdpa")
        return self.checked(model.eval())

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        # from_pretrained of the vision tower reads the vision half of a full checkpoint.
        return self.checked(from_pretrained(self.tower, path, use_safetensors))

    def is_classifier(self, model: nn.Module) -> bool:
        return False

    def prefix_tokens(self, model: nn.Module) -> int:
        return self.cls_tokens

    def protected_tokens(self, model: nn.Module) -> int:
        return self.cls_tokens

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return (model(pixel_values=pixel_values).pooler_output,)

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        return encoder_blocks(model)


FULL_MODEL = "vtc_clip_model"  # the attribute of a projected tower holding its CLIPModel


def is_full_clip(config: Any) -> bool:
    """A full CLIPModel config (vision and text), not a vision tower's."""
    return getattr(config, "text_config", None) is not None


def projected_tower(full: Any) -> nn.Module:
    """The vision half of a full ``CLIPModel`` as a ``CLIPVisionModelWithProjection``
    sharing its modules (no weight is copied); the full model stays reachable as the
    tower's ``vtc_clip_model`` (a plain attribute, not a submodule: the tower's
    parameters are the vision half's only)."""
    vcfg = full.config.vision_config.__class__.from_dict(full.config.vision_config.to_dict())
    vcfg.projection_dim = int(full.config.projection_dim)
    with torch.device("meta"):
        tower: Any = CLIPVisionModelWithProjection._from_config(vcfg, attn_implementation="sdpa")
    tower.vision_model = full.vision_model
    tower.visual_projection = full.visual_projection
    tower.__dict__[FULL_MODEL] = full
    return tower.eval()  # type: ignore[no-any-return]


@register_family
class CLIPFamily(VisionTowerFamily):
    name = "clip"
    model_types = ("clip", "clip_vision_model")
    classes: ClassVar[dict[str, type[nn.Module]]] = {"CLIPVisionModel": CLIPVisionModel}
    default_class = "CLIPVisionModel"
    default_mean = CLIP_MEAN
    default_std = CLIP_STD
    tower = CLIPVisionModel
    cls_tokens = 1

    def build(self, config: Any) -> nn.Module:
        if not is_full_clip(config):
            return super().build(config)
        full: Any = CLIPModel._from_config(config, attn_implementation="sdpa")
        return projected_tower(full.eval())

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        if not is_full_clip(config):
            return super().from_checkpoint(config, path, use_safetensors)
        return projected_tower(from_pretrained(CLIPModel, path, use_safetensors))

    def image_text(self, model: nn.Module) -> Any:
        """The full ``CLIPModel`` behind a projected tower (None: a vision-only tower)."""
        return model.__dict__.get(FULL_MODEL)

    def _vision(self, model: nn.Module) -> Any:
        m: Any = model
        return m.vision_model if self.image_text(model) is not None else m

    def output_names(self, model: nn.Module) -> tuple[str, ...]:
        return ("image_embeds",) if self.image_text(model) is not None else ("pooler_output",)

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        if self.image_text(model) is None:
            return super().hf_forward(model, pixel_values)
        return (model(pixel_values=pixel_values).image_embeds,)

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        # post_layernorm on one token (+ the visual projection of a full CLIPModel)
        m: Any = model
        proj = m.visual_projection if self.image_text(model) is not None else None
        return int(proj.in_features * proj.out_features) if proj is not None else 0

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        return encoder_blocks(self._vision(model))

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        m = self._vision(model)
        return m.pre_layrnorm(m.embeddings(pixel_values))  # type: ignore[no-any-return]

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        m: Any = model
        pooled = self._vision(model).post_layernorm(tokens[:, 0])
        if self.image_text(model) is None:
            return {"pooler_output": pooled}
        return {"image_embeds": m.visual_projection(pooled)}
