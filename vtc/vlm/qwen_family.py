"""Qwen2.5-VL (``model_type: qwen2_5_vl``) as a registered vision-language family
(`vtc.vlm.families`): the checkpoint (`vtc.vlm.qwen2_5_vl`), its vision graph
(`vtc.vlm.qwen_vision`) and its eager reference (`vtc.vlm.qwen_reference`).

Which runtime runs a bundle: onnxruntime-genai's Qwen2.5-VL pipeline (genai_config type
``qwen2_5_vl``) computes the M-RoPE positions itself, from ``image_grid_thw`` and the
prompt, for a full grid of image tokens. That covers the uncut bundle and cuts inside
the LLM (FastV keeps its tokens' positions inside the decoder graph). After a cut before
the LLM (VisionZip) the kept tokens must keep their own (t, h, w) positions, which genai
has no input for, so `vtc.runtime.generate` runs those bundles itself (onnxruntime
sessions on the same three graphs, `vtc.runtime.ortloop`), fed the kept tokens' raster
indices by the vision graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtc.errors import InputError
from vtc.vlm import decoder, qwen2_5_vl, qwen_reference
from vtc.vlm.export import FEATURES, export_graph
from vtc.vlm.families import GENAI, ORT, Family
from vtc.vlm.qwen2_5_vl import QwenGeometry
from vtc.vlm.qwen_vision import QwenVision

POSITIONS = "image_positions"  # the vision graph's second output: [K] raster indices
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2-VL's processor (OpenAI CLIP's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load(path: Path, use_safetensors: bool = True, recipe: Any = None
         ) -> tuple[Any, QwenGeometry]:
    if getattr(getattr(recipe, "generate", None), "stream_lm", "auto") is True:
        raise InputError("generate.stream_lm: true is supported for LLaVA checkpoints only; "
                         "a Qwen2.5-VL reference holds its LM in memory: drop the setting")
    return qwen2_5_vl.load(path, use_safetensors, recipe)


def check_config(config: Any, where: str, recipe: Any = None) -> QwenGeometry:
    return qwen2_5_vl.check_config(config, where, qwen2_5_vl.image_size_of(recipe))


def export_vision(model: Any, geo: QwenGeometry, cuts: Any, path: Path) -> Path:
    """vision.onnx: ``pixel_values[N, 3·T·p·p]`` → ``image_features[K, D]``,
    ``image_positions[K]``."""
    px = torch.randn(geo.patches, 3 * geo.temporal_patch * geo.patch * geo.patch)
    return export_graph(QwenVision(model, geo, cuts).eval(), (px,), path, ["pixel_values"],
                        [FEATURES, POSITIONS])


def _lm_name(key: str) -> str | None:
    """Every tensor but the vision tower's, under its own name (transformers maps the
    layouts)."""
    return None if key.startswith(("visual.", "model.visual.")) else key


def lm_dir(ckpt: Path, model: Any, out: Path) -> Path:
    """A Qwen2.5-VL checkpoint directory with the language model's tensors and a
    one-block stand-in vision config: the builder loads the whole
    ``Qwen2_5_VLForConditionalGeneration`` but exports only its LM, so the tower is left
    out (the builder initialises the stand-in at random and never reads it)."""
    cfg = model.config.to_dict()
    vc = cfg["vision_config"]
    vc.update(depth=1, hidden_size=8, intermediate_size=8, num_heads=1,
              fullatt_block_indexes=[0])
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    for k in ("vtc_random_weights", "vtc_processor"):
        cfg.pop(k, None)
    return decoder.write_dir(ckpt, cfg, out, _lm_name, model)


def genai(section: dict[str, Any], geo: QwenGeometry) -> None:
    """genai's Qwen2.5-VL pipeline: its M-RoPE positions from ``image_grid_thw``."""
    section.update(type="qwen2_5_vl", image_token_id=geo.image_token_id,
                   video_token_id=geo.video_token_id,
                   vision_start_token_id=geo.vision_start_token_id)
    section["vision"].update(spatial_merge_size=geo.merge, patch_size=geo.patch,
                             window_size=geo.window, tokens_per_second=geo.tokens_per_second)
    section["vision"]["inputs"]["image_grid_thw"] = "image_grid_thw"


def processor(geo: QwenGeometry) -> dict[str, Any]:
    return {"kind": "qwen2_5_vl", "image_size": geo.image_size, "patch": geo.patch,
            "temporal_patch": geo.temporal_patch, "merge": geo.merge,
            "min_pixels": geo.min_pixels, "max_pixels": geo.max_pixels,
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


def runtime(cuts: Any) -> str:
    """genai unless a cut before the LLM moves the kept tokens' positions (module
    docstring)."""
    return ORT if cuts.projector is not None else GENAI


FAMILY = Family(
    name="qwen2_5_vl", template=qwen2_5_vl.TEMPLATE,
    load=load, check_config=check_config, lm_dir=lm_dir, export_vision=export_vision,
    export_tower_body=None, export_tower_tail=None, features_rank=2, genai=genai,
    processor=processor, runtime=runtime, image_embeds=qwen_reference.image_embeds,
    generate=qwen_reference.generate, hf_generate=qwen_reference.hf_generate)
