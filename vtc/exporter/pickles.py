"""What a `pytorch_model*.bin` that will not load is, in one line (`--allow-pickle`).

Called only after transformers failed on a pickle checkpoint, so a good checkpoint is
never read twice. Each file is classified from its first bytes and from
`torch.load(weights_only=True)` (memory-mapped for the zip format):

    empty                       "… is empty (0 bytes), not a PyTorch checkpoint"
    a Git LFS pointer           "… is a Git LFS pointer, not the weights: git lfs pull"
    safetensors under .bin      "… is a safetensors file under a pickle's name; rename it"
    neither zip nor pickle      "… is not a PyTorch checkpoint (neither the zip format of
                                 torch.save nor a pickle; it starts with 6e 6f 74 20)"
    a damaged zip / pickle      "… is a damaged PyTorch checkpoint (torch: …)"
    a pickle torch refuses      "… is a pickle torch's weights_only loader refuses
                                 (Trying to load unsupported GLOBAL posix.system …)"
    not a mapping of tensors    "… holds a list, not a state dict of tensors"
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

__all__ = ["describe", "sentence"]

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80  # the PROTO opcode every protocol ≥ 2 pickle starts with
LFS = b"version https://git-lfs"


def sentence(text: object, limit: int = 220) -> str:
    """`text` on one line, cut at the end of a sentence (or a word) within `limit`
    characters, never mid-word."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit]
    period, semi = cut.rfind(". "), cut.rfind("; ")
    if max(period, semi) >= limit // 3:
        return cut[:period + 1] if period > semi else cut[:semi]
    return cut[:cut.rfind(" ")].rstrip(",;:") + " …" if " " in cut else cut + "…"


def _refusal(text: str) -> str:
    """The reason inside torch's weights_only message (e.g. 'Unsupported operand 149',
    'Trying to load unsupported GLOBAL posix.system …'), without its advice on turning
    the check off."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation",
              "(1)", "(2)")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    kept = [p for p in paragraphs if not p.startswith(advice)] or paragraphs[-1:]
    reason = re.sub(r"^.*WeightsUnpickler error:\s*", "", kept[-1] if kept else text, flags=re.S)
    return sentence(reason, 160).rstrip(".")


def _classify(file: Path) -> str | None:
    """Why `file` cannot be loaded, or None when torch reads it as a state dict."""
    import torch

    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"{file.name} cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    if size == 0:
        return f"{file.name} is empty (0 bytes), not a PyTorch checkpoint"
    if head.startswith(LFS):
        return (f"{file.name} is a Git LFS pointer ({size} bytes), not the weights; run git "
                "lfs pull in the checkpoint's repository")
    if head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < size:
        return (f"{file.name} is a safetensors file under a pickle's name; rename it "
                "model.safetensors (then --allow-pickle is not needed)")
    is_zip = head.startswith(ZIP_MAGIC)
    if not is_zip and head[0] != PICKLE_PROTO:
        return (f"{file.name} is not a PyTorch checkpoint (neither the zip format of "
                f"torch.save nor a pickle; {size} bytes starting with {head[:4].hex(' ')}); "
                "give the checkpoint's own weights file")
    if is_zip and not zipfile.is_zipfile(file):
        return (f"{file.name} is a damaged PyTorch checkpoint (a truncated zip archive); "
                "download or copy it again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            return (f"{file.name} is a damaged PyTorch checkpoint ({sentence(exc, 160)}); "
                    "download or copy it again")
        return (f"{file.name} is a pickle torch's weights_only loader refuses "
                f"({_refusal(str(exc))}): not a plain state dict of tensors, and loading it "
                "fully could run code; if you trust it, convert it to safetensors")
    except (EOFError, RuntimeError, ValueError, KeyError, OSError) as exc:
        what = sentence(exc, 160) or type(exc).__name__
        return (f"{file.name} is a damaged or truncated PyTorch checkpoint (torch: {what}); "
                "download or copy it again")
    if not isinstance(state, dict):
        return (f"{file.name} holds a {type(state).__name__}, not a state dict of tensors; "
                "save the model's state_dict() (or safetensors)")
    other = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        return (f"{file.name} is a dict but not a state dict of tensors (its {other[0]!r} "
                f"is a {type(other[1]).__name__}); save the model's state_dict() (or "
                "safetensors)")
    return None


def describe(path: Path) -> str | None:
    """One line naming the first `pytorch_model*.bin` under `path` that is not a
    loadable PyTorch state dict, or None when all are."""
    for file in sorted(path.glob("pytorch_model*.bin")):
        why = _classify(file)
        if why is not None:
            return f"{path}: {why}"
    return None
