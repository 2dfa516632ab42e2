"""The embedded default model of `make demo` (until real weights land).

A ViT-S/16 classifier (224 px, 12 blocks, width 384, 6 heads, 1000 classes)
built from a config with a fixed seed: its weights are RANDOM. It exercises
export, rewrite, compile and validation at a realistic size; its fidelity
figures say nothing about accuracy on real images.
"""

from __future__ import annotations

from pathlib import Path


def build_demo_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write config.json + model.safetensors of the random ViT-S/16 to `path`."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                    intermediate_size=1536, image_size=224, patch_size=16)
    cfg.num_labels = 1000
    from vtc.exporter._hf import quiet_transformers

    model = ViTForImageClassification(cfg).eval()
    with quiet_transformers():
        model.save_pretrained(path, safe_serialization=True)
    return path
