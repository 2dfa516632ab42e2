"""The vision-language families vtc builds bundles for, by the checkpoint's `model_type`.

A family is one module that loads and checks the checkpoint (geometry, the visual span's
place in the prompt, the chat template) — today `vtc.vlm.llava`. The pipeline and the
sweep ask `is_vlm` instead of naming a family, so a further family (Qwen2.5-VL) is one
entry here plus its module. Importing this module imports no torch.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "is_vlm"]

# model_type → the module that loads, checks and describes the checkpoint
FAMILIES: dict[str, str] = {"llava": "vtc.vlm.llava"}


def is_vlm(model_type: str | None) -> bool:
    """Whether a checkpoint of this `model_type` builds a vision-language bundle."""
    return model_type in FAMILIES
