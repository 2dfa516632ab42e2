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


@register_family
class CLIPFamily(Family):
    name = "clip"
    model_types = ("clip", "clip_vision_model")
    classes: ClassVar[dict[str, type[nn.Module]]] = {"CLIPVisionModel": CLIPVisionModel}
    default_class = "CLIPVisionModel"
    default_mean = CLIP_MEAN
    default_std = CLIP_STD

    def build(self, config: Any) -> nn.Module:
        model: Any = CLIPVisionModel._from_config(vision_config(config), attn_implementation="sdpa")
        return model.eval()  # type: ignore[no-any-return]

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        # CLIPVisionModel.from_pretrained reads the vision half of a full CLIP checkpoint.
        return from_pretrained(CLIPVisionModel, path, use_safetensors)

    def is_classifier(self, model: nn.Module) -> bool:
        return False

    def prefix_tokens(self, model: nn.Module) -> int:
        return 1

    def protected_tokens(self, model: nn.Module) -> int:
        return 1

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        return 0  # post_layernorm on one token

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return (model(pixel_values=pixel_values).pooler_output,)

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        m: Any = model
        return m.pre_layrnorm(m.embeddings(pixel_values))  # type: ignore[no-any-return]

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        return encoder_blocks(model)

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        m: Any = model
        return {"pooler_output": m.post_layernorm(tokens[:, 0])}
