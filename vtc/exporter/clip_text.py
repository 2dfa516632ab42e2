"""The text tower of a full CLIP checkpoint: its tokenizer, its ONNX export and the
eager (uncompressed) embeddings the zero-shot tier compares against.

``text.onnx``: inputs ``input_ids`` ``[B, T]`` int64 and ``attention_mask`` ``[B, T]``
int64 (1 for a real token, 0 for padding), output ``text_embeds`` ``[B, D]`` =
``text_projection(pooler_output)`` (HF's ``CLIPTextModelWithProjection``; unnormalised).
``T`` is fixed: the text config's ``max_position_embeddings`` or the recipe's
``export.text_length``; captions are padded to it (``padding="max_length"``) and cut
when longer. The tower is exported unchanged (no token reduction).

The tokenizer is read from the checkpoint directory with ``AutoTokenizer`` from local
files only, never running remote code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vtc.errors import InputError
from vtc.passes import model_io

from ._hf import quiet_transformers
from .export import export_module

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "text_embeds"
# what AutoTokenizer can build a CLIP tokenizer from: a fast tokenizer file, or the
# slow tokenizer's BPE vocabulary and merges
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class TokenizerError(InputError):
    """A full CLIP checkpoint without a usable tokenizer (exit 2)."""


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's tokenizer (AutoTokenizer, local files only, no remote code)."""
    path = Path(path)
    if not any(all((path / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise TokenizerError(
            f"{path} has no tokenizer files (tokenizer.json, or vocab.json and merges.txt): "
            "a full CLIP checkpoint needs its tokenizer for the text tower; save it there "
            "(tokenizer.save_pretrained(DIR)) or give a clip_vision_model checkpoint")
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                 trust_remote_code=False)
    except Exception as exc:  # the checkpoint's files, not vtc: one line, exit 2
        text = " ".join(str(exc).split())[:300]
        raise TokenizerError(f"{path}: cannot load the tokenizer ({type(exc).__name__}: "
                             f"{text}); give a checkpoint whose tokenizer files "
                             "transformers' AutoTokenizer reads") from exc


@dataclass
class Captions:
    """Captions tokenized for ``text.onnx``: ``input_ids``/``attention_mask`` ``[K, T]``
    int64."""

    texts: list[str]
    source: str  # default | recipe | file
    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: int  # captions longer than T tokens (cut to T)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def text_length(full: Any, wanted: int | None) -> int:
    """T: `wanted` (export.text_length) or the text config's max_position_embeddings;
    InputError when `wanted` exceeds the position table."""
    most = int(full.config.text_config.max_position_embeddings)
    if wanted is None:
        return most
    if wanted > most:
        raise InputError(f"export.text_length={wanted} exceeds the text tower's "
                         f"{most} positions (max_position_embeddings); give at most {most}")
    return wanted


def tokenize(tokenizer: Any, texts: list[str], length: int, source: str) -> Captions:
    """`texts` → padded, truncated token ids of exactly `length` tokens each."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                    return_tensors="np")
    full = tokenizer(texts, truncation=False)["input_ids"]
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    if ids.shape != (len(texts), length):
        raise InputError(f"the tokenizer gave token ids of shape {list(ids.shape)}, not "
                         f"[{len(texts)}, {length}]; give a tokenizer that pads")
    return Captions(texts, source, ids, mask, sum(len(f) > length for f in full))


class TextWrapper(nn.Module):
    """``forward(input_ids, attention_mask) -> (text_embeds,)`` with the CLIPModel's own
    text tower and projection."""

    def __init__(self, full: Any) -> None:
        super().__init__()
        self.text_model = full.text_model
        self.text_projection = full.text_projection

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor]:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return (self.text_projection(out.pooler_output),)


def export_text(full: Any, captions: Captions, batch: int, path: Path, opset: int = 18,
                dynamic_batch: bool = False) -> Path:
    """``text.onnx`` (module docstring) at `path`: a static batch of `batch` captions, or a
    symbolic one with `dynamic_batch`."""
    wrapper = TextWrapper(full).float().eval()
    idx = np.arange(batch) % len(captions.texts)
    examples = (torch.from_numpy(captions.input_ids[idx]),
                torch.from_numpy(captions.attention_mask[idx]))
    size = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    return export_module(wrapper, examples, list(INPUTS), [OUTPUT], path, opset=opset,
                         dynamic_batch=dynamic_batch, inline=size <= model_io.INLINE_LIMIT_BYTES)


def eager_text(full: Any, captions: Captions) -> np.ndarray:
    """The eager CLIPModel's ``text_embeds`` ``[K, D]`` for the captions."""
    with torch.no_grad():
        out = TextWrapper(full).eval()(torch.from_numpy(captions.input_ids),
                                       torch.from_numpy(captions.attention_mask))
    return out[0].float().numpy()  # type: ignore[no-any-return]


def eager_images(full: Any, x: np.ndarray, chunk: int = 16) -> np.ndarray:
    """The eager CLIPModel's ``image_embeds`` ``[N, D]`` (visual_projection of the
    pooled output) for normalised pixels `x` ``[N, C, H, W]``."""
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), chunk):
            t = torch.from_numpy(np.ascontiguousarray(x[start:start + chunk]))
            pooled = full.vision_model(pixel_values=t).pooler_output
            outs.append(full.visual_projection(pooled).float().numpy())
    return np.concatenate(outs)


__all__ = ["INPUTS", "OUTPUT", "Captions", "TextWrapper", "TokenizerError", "eager_images",
           "eager_text", "export_text", "load_tokenizer", "text_length", "tokenize"]
