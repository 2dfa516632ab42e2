"""SigLIP vision tower (HF ``model_type`` ``"siglip"`` or ``"siglip_vision_model"``).

A full ``SiglipModel`` checkpoint loads only its vision half as
``SiglipVisionModel``. There is no CLS token: every token is a patch and none is
protected (``P = 0``). Output: ``pooler_output`` = the multi-head attention
pooling head applied to ``post_layernorm`` of the (reduced) tokens. Towers
without that head (``vision_use_head = False``) are not supported.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn
from transformers import SiglipVisionModel

from .clip import VisionTowerFamily
from .registry import UnsupportedModelError, register_family


def _require_head(model: Any) -> Any:
    if not getattr(model, "use_head", False):
        raise UnsupportedModelError(
            "SigLIP vision towers without the attention-pooling head (vision_use_head=False) "
            "have no pooled output; vtc supports SigLIP towers with the head only"
        )
    return model


@register_family
class SiglipFamily(VisionTowerFamily):
    name = "siglip"
    model_types = ("siglip", "siglip_vision_model")
    classes: ClassVar[dict[str, type[nn.Module]]] = {"SiglipVisionModel": SiglipVisionModel}
    default_class = "SiglipVisionModel"
    default_mean = (0.5, 0.5, 0.5)
    default_std = (0.5, 0.5, 0.5)
    tower = SiglipVisionModel
    cls_tokens = 0

    def checked(self, model: Any) -> nn.Module:
        return _require_head(model)  # type: ignore[no-any-return]

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        cfg = self.config_of(model)
        c, m = int(cfg.hidden_size), int(cfg.intermediate_size)
        # probe query + K/V over all tokens + scores/AV + out proj + MLP on one token
        return c * c + 2 * tokens * c * c + 2 * tokens * c + c * c + 2 * c * m

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        m: Any = model
        return m.embeddings(pixel_values)  # type: ignore[no-any-return]

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        m: Any = _require_head(model)
        return {"pooler_output": m.head(m.post_layernorm(tokens))}
