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


def build_demo_llava(path: Path, seed: int = 0) -> Path:
    """Write a tiny LLaVA checkpoint with RANDOM weights to `path` (what `vtc demo --vlm`
    builds): a 3-block CLIP tower (32 px, patch 8: 17 tower tokens, 16 visual tokens), a
    4-layer Llama LM with grouped-query attention, and a word-level ``tokenizer.json``.
    Its greedy text is word salad; it exists to try `vtc generate` and the VLM cuts without
    a 7B download."""
    from vtc.vlm import llava

    cfg = llava.tiny_config()
    cfg.text_config.initializer_range = 0.3  # varied greedy tokens from random weights
    path.mkdir(parents=True, exist_ok=True)
    llava.save_random(cfg, path, seed=seed)
    llava.word_tokenizer(path, cfg.image_token_id, cfg.text_config.vocab_size)
    return path
