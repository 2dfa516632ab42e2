"""Small helpers around Hugging Face transformers shared by the family modules."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from torch import nn

from vtc.errors import InputError


class MissingWeightsError(InputError):
    """The checkpoint lacks weights the model class needs (they would be random)."""

    def __init__(self, path: Path, missing: list[str]) -> None:
        self.missing = missing
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        super().__init__(
            f"{path}: the checkpoint has no weights for {len(missing)} parameters ({shown}); "
            "refusing to run with randomly initialised weights"
        )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _stored_values(path: Path) -> int | None:
    """How many values the ``*.safetensors`` files of `path` hold (their headers only);
    None without such files or with a header that cannot be read (the load names it)."""
    total = 0
    files = sorted(Path(path).glob("*.safetensors"))
    try:
        for f in files:
            with f.open("rb") as fh:
                header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, MemoryError, OverflowError):
        return None
    return total if files else None


def check_size(cls: type[nn.Module], path: Path) -> None:
    """Refuse, before any memory is allocated, a config.json that describes a model more
    than twice the size of the weights beside it (a missing ``text_config`` falls back to a
    7B default; an edited size): the model class is built on the meta device, its
    parameters counted and compared with the values in the safetensors headers. A smaller
    misfit is left to the load, which names the weight of another shape."""
    import torch
    from transformers import AutoConfig

    stored = _stored_values(path)
    if stored is None:
        return
    try:
        # the class's own config reads a sub-config where the file holds a composite one
        # (SiglipVisionModel from a full SiglipModel's config.json), as from_pretrained does
        config_class = getattr(cls, "config_class", None)
        config = (config_class.from_pretrained(path, local_files_only=True)
                  if config_class is not None else
                  AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False))
        with torch.device("meta"), quiet_transformers():
            model = cast(Any, cls)._from_config(config)
        needed = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # a config transformers cannot build a model from
        raise InputError(f"{path}/config.json: transformers cannot build {cls.__name__} from it "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); give "
                         "the checkpoint's own config.json") from None
    if needed > 2 * stored:
        raise InputError(f"{path}/config.json describes a {cls.__name__} of {needed:,} "
                         f"parameters, but the safetensors files hold {stored:,} values; give "
                         "the config.json that belongs to these weights (a sub-config "
                         "missing, e.g. text_config, falls back to a default size)")


def from_pretrained(
    cls: type[nn.Module], path: Path, use_safetensors: bool, **kwargs: Any
) -> nn.Module:
    """``cls.from_pretrained`` from a local directory only, never running remote
    code, with SDPA attention, in eval mode. Raises :class:`MissingWeightsError`
    if any parameter of ``cls`` is absent from the checkpoint, an InputError before
    loading when config.json describes more than twice the parameters the weights hold."""
    loader: Any = cls
    if use_safetensors:
        check_size(cls, path)
    try:
        with quiet_transformers():
            model, info = loader.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=use_safetensors,
                weights_only=True,
                trust_remote_code=False,
                attn_implementation="sdpa",
                output_loading_info=True,
                **kwargs,
            )
    except Exception as exc:  # the checkpoint, not vtc: one line, exit 2 (never a traceback)
        from vtc.exporter import pickles

        text = " ".join(str(exc).split())
        if "mismatched" in text or "size mismatch" in text:
            text = ("a weight has another shape than its config.json implies (hidden size, "
                    "patch size, heads, image size?)")
        elif not use_safetensors and (why := pickles.describe(Path(path))) is not None:
            raise InputError(why) from exc  # what the pickle file is, not torch's advice
        raise InputError(f"{path}: cannot load the weights into {cls.__name__} "
                         f"({type(exc).__name__}: {pickles.sentence(text, 300)}); give a "
                         "checkpoint whose weights and config.json belong together") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise MissingWeightsError(path, missing)
    model = model.float().eval()
    for name, p in model.named_parameters():  # NaN/inf weights: every output would be NaN
        if not bool(p.detach().isfinite().all()):
            raise InputError(f"{path}: weight {name} holds NaN or infinite values; give a "
                             "checkpoint with finite weights (re-download or re-train it)")
    return model  # type: ignore[no-any-return]


def read_model_type(path: Path) -> str:
    """``model_type`` from ``path/config.json``."""
    file = path / "config.json"
    if not file.is_file():
        raise InputError(f"{path} has no config.json; expected an HF checkpoint directory")
    model_type = json.loads(file.read_text()).get("model_type")
    if not model_type:
        raise InputError(f"{file} has no model_type; give an HF checkpoint's config.json")
    return str(model_type)


def image_hw(value: Any) -> tuple[int, int]:
    """An HF ``image_size`` (int or pair) as ``(height, width)``."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def patch_hw(value: Any) -> tuple[int, int]:
    """An HF ``patch_size`` (int or pair) as ``(height, width)``."""
    return image_hw(value)


def linear_macs(layer: Any) -> int:
    """MACs of one application of an ``nn.Linear`` (0 for anything else)."""
    if isinstance(layer, nn.Linear):
        return int(layer.in_features * layer.out_features)
    return 0
