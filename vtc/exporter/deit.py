"""DeiT (HF ``model_type == "deit"``): ``DeiTModel``, ``DeiTForImageClassification``
and the distilled ``DeiTForImageClassificationWithTeacher``.

Token layout entering block 0: ``[CLS, DIST, patch_0 .. patch_{n-1}]``. HF's DeiT
embedding always adds the distillation token, so both leading tokens are
protected for every DeiT class (the distilled head reads index 1; for the
others the distillation token is still a learned non-patch token, which
ToMe/EViT must not merge into or prune like a patch).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
)

from .registry import register_family
from .vit import ViTLikeFamily


@register_family
class DeiTFamily(ViTLikeFamily):
    name = "deit"
    model_types = ("deit",)
    classes: ClassVar[dict[str, type[nn.Module]]] = {
        "DeiTModel": DeiTModel,
        "DeiTForImageClassification": DeiTForImageClassification,
        "DeiTForImageClassificationWithTeacher": DeiTForImageClassificationWithTeacher,
    }
    default_class = "DeiTModel"
    encoder_attr = "deit"
    encoder_class = DeiTModel

    def prefix_tokens(self, model: nn.Module) -> int:
        return 2

    def protected_tokens(self, model: nn.Module) -> int:
        return 2

    @staticmethod
    def distilled(model: nn.Module) -> bool:
        return isinstance(model, DeiTForImageClassificationWithTeacher)

    def classify(self, model: nn.Module, seq: Tensor) -> Tensor:
        """The distilled head averages the CLS (index 0) and distillation (index 1) logits."""
        if not self.distilled(model):
            return super().classify(model, seq)
        clf: Any = model
        return (clf.cls_classifier(seq[:, 0]) + clf.distillation_classifier(seq[:, 1])) / 2
