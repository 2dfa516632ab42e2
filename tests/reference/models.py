"""Tiny seeded HF models and inputs shared by the oracles' own tests.

Hidden 64, 3 layers, 4 heads, image 32, patch 8 (16 patches), intermediate 128,
10 labels; every parameter perturbed with N(0, 0.1) noise so attention is far from
uniform. ViT sequences have 17 tokens (CLS + 16), DeiT 18 (CLS + distill + 16), DINOv2 17
(CLS + 16; MLP ratio 2, layer scale 0.5 before the noise, so every block's two factors
differ from 1 and from each other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TINY: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
)
LABELS: dict[str, Any] = {"num_labels": 10}


def _perturb(model: Any, seed: int) -> Any:
    """Add seeded N(0, 0.1) noise to every parameter; return the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _vit_cls() -> Any:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    return _perturb(ViTForImageClassification(ViTConfig(**TINY, **LABELS)), 1)


def _vit_model() -> Any:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return _perturb(ViTModel(ViTConfig(**TINY)), 2)


def _vit_model_no_pooler() -> Any:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return _perturb(ViTModel(ViTConfig(**TINY), add_pooling_layer=False), 3)


def _deit_teacher() -> Any:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    torch.manual_seed(0)
    return _perturb(DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, **LABELS)), 4)


def _deit_cls() -> Any:
    from transformers import DeiTConfig, DeiTForImageClassification

    torch.manual_seed(0)
    return _perturb(DeiTForImageClassification(DeiTConfig(**TINY, **LABELS)), 5)


def _deit_model() -> Any:
    from transformers import DeiTConfig, DeiTModel

    torch.manual_seed(0)
    return _perturb(DeiTModel(DeiTConfig(**TINY)), 6)


def _dinov2_config(**kw: Any) -> Any:
    from transformers import Dinov2Config

    dims = {k: v for k, v in TINY.items() if k != "intermediate_size"}
    return Dinov2Config(**dims, mlp_ratio=2, layerscale_value=0.5, **kw)


def _dinov2_model() -> Any:
    from transformers import Dinov2Model

    torch.manual_seed(0)
    return _perturb(Dinov2Model(_dinov2_config()), 7)


def _dinov2_swiglu() -> Any:
    from transformers import Dinov2Model

    torch.manual_seed(0)
    return _perturb(Dinov2Model(_dinov2_config(use_swiglu_ffn=True)), 8)


BUILDERS: dict[str, Callable[[], Any]] = {
    "vit_cls": _vit_cls,
    "vit_model": _vit_model,
    "vit_model_no_pooler": _vit_model_no_pooler,
    "deit_teacher": _deit_teacher,
    "deit_cls": _deit_cls,
    "deit_model": _deit_model,
    "dinov2_model": _dinov2_model,
    "dinov2_swiglu": _dinov2_swiglu,
}


def _pixels(batch: int = 2, seed: int = 7) -> torch.Tensor:
    """[batch, 3, 32, 32] seeded standard-normal images."""
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _hf_output(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own forward, reduced to the key the oracle returns."""
    with torch.no_grad():
        out = model(pixel_values=pixels)
    if getattr(out, "logits", None) is not None:
        return {"logits": out.logits}
    if out.pooler_output is not None:
        return {"pooler_output": out.pooler_output}
    return {"pooler_output": out.last_hidden_state[:, 0]}
