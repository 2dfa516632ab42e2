"""Tiny, seeded models of every family (random weights, no hub access), shared by all tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    DeiTConfig,
    Dinov2Config,
    SiglipVisionConfig,
    ViTConfig,
)

import vtc.exporter  # noqa: F401  (registers the families)
from vtc.exporter.export import export_onnx
from vtc.exporter.registry import Family, get_family

IMAGE = 32
BATCH = 2
_BASE: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=IMAGE,
    patch_size=8,
)


def _vit(**kw: Any) -> Any:
    return ViTConfig(**_BASE, intermediate_size=128, **kw)


def _deit(**kw: Any) -> Any:
    return DeiTConfig(**_BASE, intermediate_size=128, **kw)


# Family name -> {variant id: config factory}. Every registered family needs an entry
# (tests/exporter/test_families.py::test_every_family_has_tiny_configs).
TINY_CONFIGS: dict[str, dict[str, Callable[[], Any]]] = {
    "vit": {
        "vit-cls": lambda: _vit(num_labels=10, architectures=["ViTForImageClassification"]),
        "vit-enc": lambda: _vit(architectures=["ViTModel"]),
    },
    "deit": {
        "deit-teacher": lambda: _deit(
            num_labels=10, architectures=["DeiTForImageClassificationWithTeacher"]
        ),
        "deit-cls": lambda: _deit(num_labels=10, architectures=["DeiTForImageClassification"]),
    },
    "dinov2": {
        "dinov2": lambda: Dinov2Config(**_BASE, mlp_ratio=2, layerscale_value=0.5),
        "dinov2-cls": lambda: Dinov2Config(
            **_BASE, mlp_ratio=2, layerscale_value=0.5, num_labels=10,
            architectures=["Dinov2ForImageClassification"],
        ),
    },
    "clip": {
        "clip": lambda: CLIPVisionConfig(**_BASE, intermediate_size=128),
    },
    "siglip": {
        "siglip": lambda: SiglipVisionConfig(**_BASE, intermediate_size=128),
    },
}

VARIANTS: dict[str, tuple[str, Callable[[], Any]]] = {
    vid: (fam, make) for fam, variants in TINY_CONFIGS.items() for vid, make in variants.items()
}


def perturb(model: Any, seed: int = 0, scale: float = 0.1) -> Any:
    """Add seeded noise to every parameter: HF's 0.02-std init gives nearly uniform
    attention, which would make reduction tests weak."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def build_variant(variant: str, seed: int = 0) -> tuple[Family, Any]:
    """(family, tiny eval-mode model) for a variant id of TINY_CONFIGS."""
    fam_name, make = VARIANTS[variant]
    config = make()
    family = get_family(config.model_type)
    assert family.name == fam_name
    torch.manual_seed(seed)
    return family, perturb(family.build(config), seed)


def pixels(seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    """Seeded pixel_values ``[batch, 3, IMAGE, IMAGE]``."""
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


class LazyModels:
    """Builds (and exports) each variant on first use, once per session."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._models: dict[str, tuple[Family, Any]] = {}
        self._onnx: dict[str, Path] = {}

    def model(self, variant: str) -> tuple[Family, Any]:
        if variant not in self._models:
            self._models[variant] = build_variant(variant)
        return self._models[variant]

    def onnx(self, variant: str) -> Path:
        """The variant exported with the dynamo exporter (opset 18, batch BATCH)."""
        if variant not in self._onnx:
            family, model = self.model(variant)
            self._onnx[variant] = export_onnx(
                family, model, BATCH, IMAGE, self.out / f"{variant}.onnx"
            )
        return self._onnx[variant]
