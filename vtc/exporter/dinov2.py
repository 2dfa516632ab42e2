"""DINOv2 (HF ``model_type == "dinov2"``): ``Dinov2Model`` and
``Dinov2ForImageClassification``.

Token layout entering block 0: ``[CLS, (registers), patch_0 .. patch_{n-1}]``;
CLS and any register tokens are protected. Blocks carry layer scale. The
position embeddings are interpolated to the input size, so any multiple of
the patch size works; the default input side is the preprocessor's crop size
when the checkpoint has one (DINOv2 checkpoints say 518 in config.json but
are preprocessed to 224).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from transformers import Dinov2ForImageClassification, Dinov2Model

from ._hf import linear_macs
from .registry import BlockParts, Family, register_family


@register_family
class Dinov2Family(Family):
    name = "dinov2"
    model_types = ("dinov2",)
    classes: ClassVar[dict[str, type[nn.Module]]] = {
        "Dinov2Model": Dinov2Model,
        "Dinov2ForImageClassification": Dinov2ForImageClassification,
    }
    default_class = "Dinov2Model"

    def encoder(self, model: nn.Module) -> Any:
        return cast(Any, model).dinov2 if self.is_classifier(model) else model

    def is_classifier(self, model: nn.Module) -> bool:
        return isinstance(model, Dinov2ForImageClassification)

    def image_size(self, model: nn.Module) -> int:
        pre = getattr(self.config_of(model), "vtc_preprocessor", None) or {}
        if pre.get("crop_size"):
            return int(pre["crop_size"])
        return super().image_size(model)

    def registers(self, model: nn.Module) -> int:
        return int(getattr(self.config_of(model), "num_register_tokens", 0) or 0)

    def prefix_tokens(self, model: nn.Module) -> int:
        return 1 + self.registers(model)

    def protected_tokens(self, model: nn.Module) -> int:
        return 1 + self.registers(model)

    def mlp_width(self, model: nn.Module) -> int:
        cfg = self.config_of(model)
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        if getattr(cfg, "use_swiglu_ffn", False):
            # SwiGLU has three matrices of the reduced width: count it as 1.5 plain MLPs.
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8 * 3 // 2
        return hidden

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        return linear_macs(getattr(model, "classifier", None))

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        out = model(pixel_values=pixel_values)
        return (out.logits,) if self.is_classifier(model) else (out.pooler_output,)

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.encoder(model).embeddings(pixel_values)  # type: ignore[no-any-return]

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        parts = []
        for layer in self.encoder(model).encoder.layer:
            att = layer.attention
            parts.append(
                BlockParts(
                    norm1=layer.norm1,
                    q=att.q_proj,
                    k=att.k_proj,
                    v=att.v_proj,
                    o=att.o_proj,
                    norm2=layer.norm2,
                    mlp=layer.mlp,
                    ls1=layer.layer_scale1,
                    ls2=layer.layer_scale2,
                    num_heads=int(att.num_attention_heads),
                    scale=float(att.scaling),
                )
            )
        return parts

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        seq = self.encoder(model).layernorm(tokens)
        if not self.is_classifier(model):
            return {"pooler_output": seq[:, 0]}
        # HF: classifier(cat(CLS, mean of the tokens after CLS)); with registers HF
        # would average them too, so we do the same.
        clf: Any = model
        return {"logits": clf.classifier(torch.cat([seq[:, 0], seq[:, 1:].mean(dim=1)], dim=1))}
