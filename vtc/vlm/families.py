"""The vision-language families vtc builds bundles for, by the checkpoint's `model_type`.

A family is one registered module (`FAMILIES`: model_type → module) that exposes
``FAMILY``, a `Family`: how to load and check the checkpoint, the chat template that
places the image, how to export its vision graph (uncut, or as the body the encoder
passes rewrite plus the tail with the projector cut), and its eager reference. The VLM
stage (`vtc.stages.vlm`) and the generation checks (`vtc.validate.generation`) call
only these, so a further family is one module plus its tests (Qwen2.5-VL's is
`vtc.vlm.qwen_family`). The language model is the standard exporter's
(onnxruntime-genai's builder) for every family, cut by the LM cuts' decoder passes.
Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtc.errors import InputError

__all__ = ["FAMILIES", "GENAI", "ORT", "Family", "get", "is_vlm"]

# model_type → the module whose FAMILY loads, checks, exports and references it
FAMILIES: dict[str, str] = {"llava": "vtc.vlm.llava_family",
                             "qwen2_5_vl": "vtc.vlm.qwen_family"}


GENAI = "onnxruntime-genai"  # the runtimes a bundle names in generation.json
ORT = "onnxruntime"


@dataclass(frozen=True)
class Family:
    """One vision-language family's entry points (shapes as in `vtc.vlm.reference`).

    load(path, use_safetensors, recipe) → (model, geometry); check_config(config, where,
    recipe) → geometry (the recipe may fix an image size); template: the chat template
    with ``<image>`` and ``{prompt}``; lm_dir(ckpt, model, out): the language model as a
    directory onnxruntime-genai's model builder reads; export_vision(model, geo, cuts,
    path): vision.onnx without encoder cuts; export_tower_body(model, geo, path) /
    export_tower_tail(model, geo, cuts, tokens, sizes, path): the two parts of
    vision.onnx with encoder cuts (None where the family refuses encoder cuts);
    features_rank: the rank of ``image_features`` (3: ``[1, K, D]``; 2: ``[K, D]``);
    genai(model_section, geo): genai_config.json's model section for this family (type,
    vision and embedding graphs, token ids); processor(geo): generation.json's
    ``processor`` (how `vtc.runtime.generate` turns an image into the vision graph's
    input); runtime(cuts): which runtime runs a bundle with these cuts (`GENAI`, or `ORT`
    where genai cannot express them: vtc.runtime's own loop over the same graphs);
    image_embeds(model, geo, cuts, pixel_values) → the vision graph's features;
    generate(model, geo, cuts, ids, pixel_values, max_new, eos) and hf_generate(model,
    geo, ids, pixel_values, max_new, eos) → greedy tokens and first logits (with the
    cuts / HF's own uncut model)."""

    name: str
    template: str
    load: Callable[..., tuple[Any, Any]]
    check_config: Callable[..., Any]
    lm_dir: Callable[..., Any]
    export_vision: Callable[..., Any]
    export_tower_body: Callable[..., Any] | None
    export_tower_tail: Callable[..., Any] | None
    features_rank: int
    genai: Callable[[dict[str, Any], Any], None]
    processor: Callable[[Any], dict[str, Any]]
    runtime: Callable[[Any], str]
    image_embeds: Callable[..., Any]
    generate: Callable[..., Any]
    hf_generate: Callable[..., Any]


def is_vlm(model_type: str | None) -> bool:
    """Whether a checkpoint of this `model_type` builds a vision-language bundle."""
    return model_type in FAMILIES


def get(model_type: str | None) -> Family:
    """The family of `model_type` (imports its module: torch and transformers)."""
    if model_type not in FAMILIES:
        raise InputError(f"model_type {model_type!r} is not a vision-language family vtc "
                         f"builds; supported: {', '.join(sorted(FAMILIES))}")
    family: Family = importlib.import_module(FAMILIES[model_type]).FAMILY
    return family
