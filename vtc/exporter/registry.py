"""Model families: what vtc needs to know about each supported HF vision encoder.

A :class:`Family` is a stateless adapter around one Hugging Face model family
(ViT, DeiT, DINOv2, CLIP vision, SigLIP vision). It builds or loads the model,
describes its geometry for the budget, wraps it for ONNX export and hands the
eager reference the pieces it needs (embedding, per-block parts, head), all
reusing the HF modules' own weights.

Families register themselves with :func:`register_family`; importing
``vtc.exporter`` imports every family module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from torch import Tensor, nn

from vtc.budget import Geometry
from vtc.errors import InputError

from ._hf import from_pretrained, image_hw, patch_hw, read_model_type

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnsupportedModelError(InputError):
    """The checkpoint's model type or architecture is not one vtc handles."""


class PickleRefusedError(InputError):
    """The checkpoint is only available as a pickle and the user did not allow pickles."""


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm transformer block, as references to the HF submodules.

    All callables map ``[B, N, C] -> [B, N, C]``; ``q``/``k``/``v`` produce
    ``[B, N, H*D]`` (split into ``num_heads`` heads of width ``D``), ``o`` maps
    ``[B, N, H*D] -> [B, N, C]``. ``ls1``/``ls2`` are layer-scale callables
    (DINOv2) or ``None``. ``scale`` multiplies ``q @ kᵀ``.
    """

    norm1: Callable[[Tensor], Tensor]
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    ls1: Callable[[Tensor], Tensor] | None
    ls2: Callable[[Tensor], Tensor] | None
    num_heads: int
    scale: float


class ExportWrapper(nn.Module):
    """``forward(pixel_values[B, C, H, W]) -> tuple`` of the family's outputs, in
    ``output_names`` order, computed by the HF model's own forward."""

    def __init__(
        self,
        model: nn.Module,
        forward_fn: Callable[[Any, Tensor], tuple[Tensor, ...]],
        output_names: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.model = model
        self._forward_fn = forward_fn
        self.output_names = output_names

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        return self._forward_fn(self.model, pixel_values)


class Family:
    """Base class of a model family. Subclasses set ``name``, ``model_types``,
    ``classes`` (architecture name -> HF class) and ``default_class`` and
    implement the abstract hooks at the bottom."""

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    classes: ClassVar[dict[str, type[nn.Module]]] = {}
    default_class: ClassVar[str] = ""
    default_mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    default_std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    # ---- construction -------------------------------------------------
    def model_class(self, config: Any) -> type[nn.Module]:
        """The HF class for ``config``: its first known ``architectures`` entry,
        else the family's default (encoder) class."""
        for arch in getattr(config, "architectures", None) or []:
            if arch in self.classes:
                return self.classes[arch]
        return self.classes[self.default_class]

    def build(self, config: Any) -> nn.Module:
        """A randomly initialised model (eval mode, SDPA attention) from ``config``."""
        cls: Any = self.model_class(config)
        return cls._from_config(config, attn_implementation="sdpa").eval()  # type: ignore[no-any-return]

    def load(self, path: Path, allow_pickle: bool = False) -> nn.Module:
        """Load an HF checkpoint directory (``config.json`` + ``*.safetensors``;
        a ``pytorch_model.bin`` only with ``allow_pickle``)."""
        path = Path(path)
        config = _read_config(path)
        model = self.from_checkpoint(config, path, use_safetensors(path, allow_pickle))
        _attach_preprocessor(model, path)
        return model

    def from_checkpoint(self, config: Any, path: Path, use_safetensors: bool) -> nn.Module:
        """Load the weights of ``path`` into the class chosen for ``config``."""
        return from_pretrained(self.model_class(config), path, use_safetensors)

    # ---- description --------------------------------------------------
    def config_of(self, model: nn.Module) -> Any:
        return model.config

    def image_hw(self, model: nn.Module) -> tuple[int, int]:
        """(height, width) of the input image the model expects (its config's)."""
        return image_hw(self.config_of(model).image_size)

    def image_size(self, model: nn.Module) -> int:
        """Height of the input image the model expects (= width for square models)."""
        return self.image_hw(model)[0]

    def num_channels(self, model: nn.Module) -> int:
        return int(getattr(self.config_of(model), "num_channels", 3))

    def mean(self, model: nn.Module) -> tuple[float, ...]:
        """Per-channel normalisation mean (preprocessor/config if known, else the family's)."""
        return self._norm_stat(model, "image_mean", self.default_mean)

    def std(self, model: nn.Module) -> tuple[float, ...]:
        """Per-channel normalisation std (preprocessor/config if known, else the family's)."""
        return self._norm_stat(model, "image_std", self.default_std)

    def _norm_stat(
        self, model: nn.Module, key: str, default: tuple[float, ...]
    ) -> tuple[float, ...]:
        cfg = self.config_of(model)
        pre = getattr(cfg, "vtc_preprocessor", None) or {}
        value = pre.get(key, getattr(cfg, key, None))
        if value is None:
            return tuple(default)
        if isinstance(value, (int, float)):
            return (float(value),) * self.num_channels(model)
        return tuple(float(v) for v in value)

    def check_image_size(self, model: nn.Module, size: int | tuple[int, int]) -> None:
        """UnsupportedModelError unless `size` (a side, or (height, width)) is positive and
        a multiple of the patch size."""
        ph, pw = patch_hw(self.config_of(model).patch_size)
        h, w = image_hw(size)
        if h < 1 or w < 1 or h % ph or w % pw:
            bad = h if h < 1 or h % ph else w
            near = max(ph, round(bad / ph) * ph)
            shown = f"{h}" if h == w else f"{h}×{w}"
            raise UnsupportedModelError(
                f"image size {shown} does not fit the {ph}×{pw} patches of this model; "
                f"give a multiple of {ph}, e.g. --set export.image_size={near}")

    def geometry(self, model: nn.Module, image_size: int | tuple[int, int] | None = None
                 ) -> Geometry:
        """Token geometry and MAC counts for the budget at ``image_size`` (a side, or
        (height, width); None: the model's own)."""
        cfg = self.config_of(model)
        h, w = image_hw(image_size) if image_size is not None else self.image_hw(model)
        ph, pw = patch_hw(cfg.patch_size)
        patches = (h // ph) * (w // pw)
        width = int(cfg.hidden_size)
        tokens = self.prefix_tokens(model) + patches
        return Geometry(
            tokens=tokens,
            protected=self.protected_tokens(model),
            width=width,
            mlp_width=self.mlp_width(model),
            layers=int(cfg.num_hidden_layers),
            patch_flops=patches * self.num_channels(model) * ph * pw * width,
            head_flops=self.head_flops(model, tokens),
        )

    def output_names(self, model: nn.Module) -> tuple[str, ...]:
        """Names of the exported outputs: ``("logits",)`` or ``("pooler_output",)``."""
        return ("logits",) if self.is_classifier(model) else ("pooler_output",)

    def wrap_for_export(self, model: nn.Module) -> ExportWrapper:
        """A module returning the HF model's outputs as a tuple in ``output_names`` order."""
        return ExportWrapper(model, self.hf_forward, self.output_names(model)).eval()

    def mlp_width(self, model: nn.Module) -> int:
        return int(self.config_of(model).intermediate_size)

    def image_text(self, model: nn.Module) -> Any:
        """The full image–text model behind this vision model when the checkpoint has a
        text tower too (a full CLIPModel: `vtc.exporter.clip_text` exports it beside the
        vision graph), else None."""
        return None

    def needs_grid(self, model: nn.Module) -> bool:
        """True when the head reads the full patch grid (ToMe merges are then undone
        after the last block: `vtc.passes.unmerge`)."""
        return False

    # ---- hooks each family implements ----------------------------------
    def is_classifier(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def prefix_tokens(self, model: nn.Module) -> int:
        """Non-patch tokens the embedding puts in front (CLS, distillation, registers)."""
        raise NotImplementedError

    def protected_tokens(self, model: nn.Module) -> int:
        """Leading tokens that are never merged or pruned."""
        raise NotImplementedError

    def head_flops(self, model: nn.Module, tokens: int) -> int:
        """Approximate MACs of the head per image, for ``tokens`` final tokens."""
        raise NotImplementedError

    def hf_forward(self, model: Any, pixel_values: Tensor) -> tuple[Tensor, ...]:
        """The HF forward, reduced to the outputs in ``output_names`` order."""
        raise NotImplementedError

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        """``pixel_values[B, C, H, W] -> tokens[B, N, C]`` entering block 0."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[BlockParts]:
        raise NotImplementedError

    def head(self, model: nn.Module, tokens: Tensor) -> dict[str, Tensor]:
        """``tokens[B, N', C]`` leaving the last block -> outputs by name
        (``logits[B, num_labels]`` or ``pooler_output[B, C']``)."""
        raise NotImplementedError


_FAMILIES: dict[str, Family] = {}
_BY_TYPE: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: instantiate ``cls`` and register it under its model types."""
    family = cls()
    if not family.name or not family.model_types:
        raise TypeError(f"{cls.__name__} must set name and model_types")
    _FAMILIES[family.name] = family
    for model_type in family.model_types:
        _BY_TYPE[model_type] = family
    return cls


def families() -> dict[str, Family]:
    """Registered families by name."""
    return dict(_FAMILIES)


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def get_family(model_type: str) -> Family:
    """The family handling HF ``model_type`` (raises :class:`UnsupportedModelError`)."""
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types: "
            + ", ".join(supported_model_types())
        ) from None


def family_of(model: nn.Module) -> Family:
    """The family of a built/loaded model (by its config's ``model_type``)."""
    return get_family(str(cast(Any, model).config.model_type))


def load_model(path: Path, allow_pickle: bool = False) -> tuple[Family, nn.Module]:
    """Read ``path/config.json``, pick the family and load the model (eval mode)."""
    family = get_family(read_model_type(Path(path)))
    return family, family.load(Path(path), allow_pickle=allow_pickle)


def _read_config(path: Path) -> Any:
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise UnsupportedModelError(
            f"{path} has no config.json; expected an HF checkpoint directory")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers' own validation of the fields: one line, exit 2
        from vtc.exporter.pickles import sentence

        raise UnsupportedModelError(
            f"{path / 'config.json'}: transformers refuses it ({type(exc).__name__}: "
            f"{sentence(exc, 240)}); give the checkpoint's own config.json") from exc


def use_safetensors(path: Path, allow_pickle: bool) -> bool:
    """True for a safetensors checkpoint; False for an allowed pickle one; an InputError
    naming the fix for a folder with no weights, or with pickle weights only and no
    `allow_pickle` (every family's load, encoder and vision-language, asks this)."""
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return True
    pickles = sorted(p.name for p in path.glob("pytorch_model*.bin*"))
    if not pickles:
        raise UnsupportedModelError(
            f"{path} has no *.safetensors (or pytorch_model.bin) weights")
    if not allow_pickle:
        raise PickleRefusedError(
            f"{path} only has pickle weights ({', '.join(pickles)}); loading a pickle can run "
            "arbitrary code. Convert it to safetensors, or pass --allow-pickle if you trust it "
            "(it is then loaded with torch.load(weights_only=True))"
        )
    return False


def _attach_preprocessor(model: nn.Module, path: Path) -> None:
    """Record mean/std/crop size from ``preprocessor_config.json`` on the config."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnsupportedModelError(f"{file}: not readable UTF-8 JSON ({type(exc).__name__}); "
                                    "give the checkpoint's own preprocessor_config.json, or "
                                    "remove it") from exc
    if not isinstance(raw, dict):
        raise UnsupportedModelError(f"{file} holds a {type(raw).__name__}, not a mapping; give "
                                    "the checkpoint's own preprocessor_config.json, or remove it")
    pre: dict[str, Any] = {}
    for key in ("image_mean", "image_std"):
        if raw.get(key) is not None:
            pre[key] = raw[key]
    crop = raw.get("crop_size") if raw.get("do_center_crop", True) else None
    if isinstance(crop, dict):
        crop = crop.get("height") or crop.get("shortest_edge")
    if isinstance(crop, int):
        pre["crop_size"] = crop
    config: Any = model.config
    config.vtc_preprocessor = pre


__all__ = [
    "BlockParts",
    "ExportWrapper",
    "Family",
    "PickleRefusedError",
    "UnsupportedModelError",
    "families",
    "family_of",
    "get_family",
    "load_model",
    "register_family",
    "supported_model_types",
    "use_safetensors",
]
