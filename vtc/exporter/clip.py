"""CLIP vision tower (HF ``model_type`` ``"clip"`` or ``"clip_vision_model"``).

A full ``CLIPModel`` checkpoint loads only its vision half as
``CLIPVisionModel``. Token layout entering block 0: ``[CLS, patches...]`` after
``pre_layrnorm``; CLS is protected. Output: ``pooler_output =
post_layernorm(CLS)`` (before the visual projection, as HF's
``CLIPVisionModel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import CLIPVisionModel

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

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        return 0  # post_layernorm on one token

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        m: Any = model
        return m.pre_layrnorm(m.embeddings(pixel_values))  # type: ignore[no-any-return]

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        m: Any = model
        return {"pooler_output": m.post_layernorm(tokens[:, 0])}
