"""The vision-language families vtc builds bundles for, by the checkpoint's `model_type`.

A family is one registered module (`FAMILIES`: model_type → module) that exposes
``FAMILY``, a `Family`: how to load and check the checkpoint, the chat template that
places the image, how to export its vision graph (uncut, or as the body the encoder
passes rewrite plus the tail with the projector cut), and its eager reference. The VLM
stage (`vtc.stages.vlm`) and the generation checks (`vtc.validate.generation`) call
only these, so a further family (Qwen2.5-VL) is one module plus its tests. The
language model is the standard exporter's (onnxruntime-genai's builder) for every
family, cut by the LM cuts' decoder passes. Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtc.errors import InputError

__all__ = ["FAMILIES", "Family", "get", "is_vlm"]

# model_type → the module whose FAMILY loads, checks, exports and references it
FAMILIES: dict[str, str] = {"llava": "vtc.vlm.llava_family"}


@dataclass(frozen=True)
class Family:
    """One vision-language family's entry points (shapes as in `vtc.vlm.reference`).

    load(path, use_safetensors) → (model, geometry); check_config(config, where) →
    geometry; template: the chat template with ``<image>`` and ``{prompt}``;
    export_vision(model, geo, cuts, path): vision.onnx without encoder cuts;
    export_tower_body(model, geo, path) / export_tower_tail(model, geo, cuts, tokens,
    sizes, path): the two parts of vision.onnx with encoder cuts (the body is what the
    encoder passes rewrite); image_embeds(model, geo, cuts, pixel_values) →
    ``[B, K, D]``; splice(model, ids, image_token_id, images) → (``[1, S, D]``, image
    start); generate(model, geo, cuts, embeds, start, max_new, eos) and
    hf_generate(model, geo, ids, pixel_values, max_new, eos) → greedy tokens and first
    logits (with the cuts / HF's own uncut model)."""

    name: str
    template: str
    load: Callable[..., tuple[Any, Any]]
    check_config: Callable[[Any, str], Any]
    export_vision: Callable[..., Any]
    export_tower_body: Callable[..., Any]
    export_tower_tail: Callable[..., Any]
    image_embeds: Callable[..., Any]
    splice: Callable[..., Any]
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
