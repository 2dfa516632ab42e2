"""Tiny LLaVA checkpoints (random, seeded, with a word-level tokenizer) and one bundle
built from them, shared by the VLM tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vtc.vlm import llava, reference
from vtc.vlm.plan import Cuts

SMALL = {"generate": {"prompt_tokens": 24, "max_new_tokens": 6, "rounds": 2,
                      "prompts": ["Describe the image.", "What is in the picture?"]}}
# every site and both kinds of LM positions: ToMe in the tower, VisionZip at the projector,
# FastV (positions kept) at LM layer 2, then a PyramidDrop stage (positions renumbered)
COMBINED = {"name": "tiny-all", "method": ["tome", "visionzip", "fastv", "pyramid"],
            "tome": {"r": 2, "proportional_attention": True},
            "visionzip": {"dominant": 6, "contextual": 3},
            "fastv": {"layer": 2, "keep": 0.5},
            "pyramid": {"stages": [3], "keep": 0.5}, **SMALL}


def tiny_config(**kw: Any) -> Any:
    cfg = llava.tiny_config(**kw)
    cfg.text_config.initializer_range = 0.3  # varied greedy tokens from random weights
    return cfg


def save(path: Path, cfg: Any) -> Path:
    llava.save_random(cfg, path)
    llava.word_tokenizer(path, cfg.image_token_id, cfg.text_config.vocab_size)
    return path


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("llava") / "ckpt", tiny_config())


@pytest.fixture(scope="session")
def make_llava(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def make(edit: Callable[[Any], None] | None = None, **kw: Any) -> Path:
        cfg = tiny_config(**kw)
        if edit is not None:
            edit(cfg)
        return save(tmp_path_factory.mktemp("llava-edit") / "ckpt", cfg)
    return make


@pytest.fixture(scope="session")
def combined_bundle(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtc import pipeline
    from vtc.recipe import from_dict

    out = tmp_path_factory.mktemp("vlm-bundle") / "out"
    pipeline.run(pipeline.Options(source=str(llava_dir), recipe=from_dict(COMBINED, "test"),
                                  out=out, batch=1, log=lambda _m: None))
    return out


@pytest.fixture(scope="session")
def built(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder's fp32 decoder of the tiny LLaVA's LM (a folder with model.onnx)."""
    from vtc.vlm import decoder

    model, _geo = llava.load(llava_dir)
    work = tmp_path_factory.mktemp("built")
    lm = decoder.write_lm_dir(llava_dir, model.config.text_config, work / "lm")
    return decoder.run_builder(lm, work / "fp32", "fp32", lambda _m: None)


@pytest.fixture(scope="session")
def tiny(llava_dir: Path) -> tuple[Any, Any]:
    """The tiny LLaVA, loaded: (model, geometry)."""
    return llava.load(llava_dir)


def prompt_embeds(model: Any, geo: Any, text_after: int, seed: int) -> tuple[torch.Tensor, int]:
    """Embeddings [1, S, D] of 3 text tokens, the image, `text_after` text tokens."""
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(1, 3, geo.image_size, geo.image_size, generator=g)
    ids = [1, 5, 6, geo.image_token_id, *range(7, 7 + text_after)]
    cuts = Cuts(None, (), geo.visual, 0)
    return reference.splice(model, ids, geo.image_token_id,
                            reference.image_embeds(model, geo, cuts, px))


def run_decoder(path: Path, embeds: np.ndarray, layers: int = 4) -> dict[str, np.ndarray]:
    """The decoder's outputs by name for a prompt with an empty cache."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, embeds.shape[1]), np.int64)}
    for i in range(layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, 2, 0, 16), np.float32)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds), strict=True))
# ---- Qwen2.5-VL: a tiny seeded checkpoint in the real layout, bundles of the shipped
# recipes at 112 × 112 px (8 × 8 patches, 16 merged tokens) ----
QWEN_PROMPTS = ["Describe the image.", "What is in the picture?",
                "what colour is the main object ?", "is there a cat or a dog in this photo ?"]
QWEN_SETS = ["generate.image_size=112", "generate.prompt_tokens=24",
             "generate.max_new_tokens=16", "generate.rounds=2",
             "generate.prompts=[" + ", ".join(f'"{p}"' for p in QWEN_PROMPTS) + "]"]


def qwen_tiny() -> Any:
    from vtc.vlm import qwen2_5_vl

    cfg = qwen2_5_vl.tiny_config()
    cfg.text_config.initializer_range = 0.3  # varied greedy tokens from random weights
    return cfg


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtc.vlm import qwen2_5_vl

    path = tmp_path_factory.mktemp("qwen") / "ckpt"
    cfg = qwen_tiny()
    qwen2_5_vl.save_random(cfg, path, spread=0.1)
    qwen2_5_vl.word_tokenizer(path, cfg)
    return path


@pytest.fixture(scope="session")
def qwen_bundle(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Callable[..., Path]:
    """The bundle of a shipped recipe (with --set overrides) on the tiny Qwen, built once
    per session."""
    from vtc import pipeline
    from vtc.recipe import load_recipe

    built: dict[tuple[str, ...], Path] = {}

    def get(recipe: str, *sets: str, bench: bool = False) -> Path:
        key = (recipe, *sets, str(bench))
        if key not in built:
            out = tmp_path_factory.mktemp("qwen-bundle") / "out"
            pipeline.run(pipeline.Options(source=str(qwen_dir),
                                          recipe=load_recipe(recipe, [*QWEN_SETS, *sets]),
                                          out=out, batch=1, bench=bench,
                                          log=lambda _m: None))
            built[key] = out
        return built[key]
    return get
