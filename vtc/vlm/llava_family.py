"""LLaVA-1.5 (``model_type: llava``, a CLIP tower, an MLP projector, a Llama or Mistral
LM) as a registered vision-language family (`vtc.vlm.families`): the checkpoint
(`vtc.vlm.llava`), its vision graphs (`vtc.vlm.export`) and its eager reference
(`vtc.vlm.reference`) bound into one `Family`."""

from __future__ import annotations

from vtc.vlm import export, llava, reference
from vtc.vlm.families import Family

FAMILY = Family(
    name="llava", template=llava.TEMPLATE, load=llava.load, check_config=llava.check_config,
    export_vision=export.export_vision, export_tower_body=export.export_tower_body,
    export_tower_tail=export.export_tower_tail, image_embeds=reference.image_embeds,
    splice=reference.splice, generate=reference.generate, hf_generate=reference.hf_generate)
