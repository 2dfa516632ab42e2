"""LLaVA-1.5 (``model_type: llava``, a CLIP tower, an MLP projector, a Llama or Mistral
LM) as a registered vision-language family (`vtc.vlm.families`): the checkpoint
(`vtc.vlm.llava`), its vision graphs (`vtc.vlm.export`) and its eager reference
(`vtc.vlm.reference`) bound into one `Family`. Every LLaVA bundle runs on
onnxruntime-genai (its generic multimodal pipeline, selected by type ``gemma3``): the
LLM's positions are 1-D, so a cut before it needs nothing genai cannot express."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vtc.errors import InputError
from vtc.vlm import decoder, export, llava, reference
from vtc.vlm.families import GENAI, Family


def _size(recipe: Any, geo: llava.VlmGeometry) -> llava.VlmGeometry:
    size = getattr(getattr(recipe, "generate", None), "image_size", None)
    if size is not None and (size if isinstance(size, int) else tuple(size)) not in (
            geo.image_size, (geo.image_size, geo.image_size)):
        raise InputError(f"generate.image_size is {size}, but LLaVA's CLIP tower takes "
                         f"{geo.image_size} px images only; drop the setting")
    return geo


def load(path: Path, use_safetensors: bool = True, recipe: Any = None
         ) -> tuple[Any, llava.VlmGeometry]:
    """The model and geometry; its LM layers streamed from the checkpoint when the
    recipe's ``generate.stream_lm`` says so (`vtc.vlm.stream.wanted`)."""
    setting = getattr(getattr(recipe, "generate", None), "stream_lm", False)
    model, geo = llava.load(path, use_safetensors, streamed=setting)
    return model, _size(recipe, geo)


def check_config(config: Any, where: str, recipe: Any = None) -> llava.VlmGeometry:
    return _size(recipe, llava.check_config(config, where))


def lm_dir(ckpt: Path, model: Any, out: Path) -> Path:
    return decoder.write_lm_dir(ckpt, model.config.text_config, out, model)


def genai(section: dict[str, Any], geo: llava.VlmGeometry) -> None:
    """``type: gemma3`` selects genai's generic vision → embedding → decoder pipeline
    (the decoder's graph is what matters, not the name; genai's Gemma image processor is
    not used: vtc.runtime.generate feeds the inputs)."""
    section["type"] = "gemma3"


def processor(geo: llava.VlmGeometry) -> dict[str, Any]:
    from vtc.exporter.clip import CLIP_MEAN, CLIP_STD

    return {"kind": "clip", "image_size": geo.image_size, "resize": "crop",
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


FAMILY = Family(
    name="llava", template=llava.TEMPLATE, load=load, check_config=check_config,
    lm_dir=lm_dir, export_vision=export.export_vision,
    export_tower_body=export.export_tower_body, export_tower_tail=export.export_tower_tail,
    features_rank=3, genai=genai, processor=processor, runtime=lambda _cuts: GENAI,
    image_embeds=reference.image_embeds, generate=reference.generate_from_ids,
    hf_generate=reference.hf_generate)
