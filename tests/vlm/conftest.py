"""Tiny LLaVA checkpoints (random, seeded, with a word-level tokenizer) and one bundle
built from them, shared by the VLM tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vtc.vlm import llava

SMALL = {"generate": {"prompt_tokens": 24, "max_new_tokens": 6, "rounds": 2,
                      "prompts": ["Describe the image.", "What is in the picture?"]}}
COMBINED = {"name": "tiny-all", "method": ["tome", "visionzip", "fastv"],
            "tome": {"r": 2, "proportional_attention": True},
            "visionzip": {"dominant": 6, "contextual": 3},
            "fastv": {"layer": 2, "keep": 0.5}, **SMALL}


def tiny(**kw: Any) -> Any:
    cfg = llava.tiny_config(**kw)
    cfg.text_config.initializer_range = 0.3  # varied greedy tokens from random weights
    return cfg


def save(path: Path, cfg: Any) -> Path:
    llava.save_random(cfg, path)
    llava.word_tokenizer(path, cfg.image_token_id, cfg.text_config.vocab_size)
    return path


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("llava") / "ckpt", tiny())


@pytest.fixture(scope="session")
def make_llava(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    def make(edit: Callable[[Any], None] | None = None, **kw: Any) -> Path:
        cfg = tiny(**kw)
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
