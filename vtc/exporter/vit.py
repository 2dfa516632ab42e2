"""ViT (HF ``model_type == "vit"``): ``ViTModel`` and ``ViTForImageClassification``.

Token layout entering block 0: ``[CLS, patch_0 .. patch_{n-1}]``; CLS is protected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import ViTForImageClassification, ViTModel

from ._hf import MissingWeightsError, from_pretrained, linear_macs
from .registry import BlockParts, Family, register_family


class ViTLikeFamily(Family):
    """Shared by ViT and DeiT: same block layout (``layernorm_before``,
    ``attention.{q,k,v,o}_proj``, ``layernorm_after``, ``mlp``), final
    ``layernorm`` and optional ``pooler`` on the encoder."""

    encoder_attr: ClassVar[str] = "vit"  # attribute holding the encoder in the classifiers
    encoder_class: ClassVar[type[nn.Module]] = ViTModel

    def encoder(self, model: nn.Module) -> Any:
        """The bare encoder (``ViTModel`` / ``DeiTModel``) inside ``model``."""
        return getattr(model, self.encoder_attr) if self.is_classifier(model) else model

    def is_classifier(self, model: nn.Module) -> bool:
        return not isinstance(model, self.encoder_class)

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        cls = self.model_class(config)
        try:
            return from_pretrained(cls, path, use_safetensors)
        except MissingWeightsError as err:
            # A bare encoder saved without its pooler: load it without one.
            only_pooler = all(k.startswith("pooler.") for k in err.missing)
            if cls is not self.encoder_class or not only_pooler:
                raise
        return from_pretrained(cls, path, use_safetensors, add_pooling_layer=False)

    def prefix_tokens(self, model: nn.Module) -> int:
        return 1

    def protected_tokens(self, model: nn.Module) -> int:
        return 1

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        enc = self.encoder(model)
        macs = linear_macs(getattr(enc.pooler, "dense", None)) if enc.pooler is not None else 0
        for name in ("classifier", "cls_classifier", "distillation_classifier"):
            macs += linear_macs(getattr(model, name, None))
        return macs

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.encoder(model).embeddings(pixel_values)  # type: ignore[no-any-return]

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        parts = []
        for layer in self.encoder(model).layers:
            att = layer.attention
            parts.append(
                BlockParts(
                    norm1=layer.layernorm_before,
                    q=att.q_proj,
                    k=att.k_proj,
                    v=att.v_proj,
                    o=att.o_proj,
                    norm2=layer.layernorm_after,
                    mlp=layer.mlp,
                    ls1=None,
                    ls2=None,
                    num_heads=int(att.num_attention_heads),
                    scale=float(att.scaling),
                )
            )
        return parts

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        out = model(pixel_values=pixel_values)
        if self.is_classifier(model):
            return (out.logits,)
        pooled = out.pooler_output
        return (pooled if pooled is not None else out.last_hidden_state[:, 0],)

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        if not self.is_classifier(model):
            return {"pooler_output": self.pooled(model, tokens)}
        return {"logits": self.classify(model, self.encoder(model).layernorm(tokens))}

    def classify(self, model: nn.Module, seq: Tensor) -> Tensor:
        """Classifier logits ``[B, num_labels]`` from the normalised tokens ``seq[B, N, C]``."""
        clf: Any = model
        return clf.classifier(seq[:, 0])  # type: ignore[no-any-return]

    def pooled(self, model: nn.Module, tokens: Tensor) -> Tensor:
        """Encoder pooler output: ``pooler(layernorm(x))`` or ``layernorm(x)[:, 0]``."""
        enc = self.encoder(model)
        seq = enc.layernorm(tokens)
        return enc.pooler(seq) if enc.pooler is not None else seq[:, 0]  # type: ignore[no-any-return]


@register_family
class ViTFamily(ViTLikeFamily):
    name = "vit"
    model_types = ("vit",)
    classes: ClassVar[dict[str, type[nn.Module]]] = {
        "ViTModel": ViTModel,
        "ViTForImageClassification": ViTForImageClassification,
    }
    default_class = "ViTModel"

