"""Exports remembered within one process: the same model, weights and export arguments
give the same ONNX file, so a second export is written from memory.

`vtc sweep` runs one pipeline per budget value on one checkpoint, and the pipelines of a
process (a test session, a notebook) often export one model many times; the dynamo
exporter takes seconds even for a small ViT. The key is a sha256 over everything the
exported graph depends on:

    family name, model class and module tree (repr), config (JSON, attention
    implementation), every state_dict tensor (name, dtype, shape, bytes),
    (batch, height, width, opset, exporter, dynamic batch, inline or external weights,
    output names, file name),
    torch's version

Only models of at most `MAX_MODEL_BYTES` are remembered (hashing a large checkpoint costs
more than it saves, and the memory is not worth it); at most `MAX_BYTES` of files are
kept, least recently used dropped first. A file restored from memory is written to a
temporary name and moved into place, as an export is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MAX_BYTES", "MAX_MODEL_BYTES", "clear", "key", "restore", "store"]

MAX_MODEL_BYTES = 64 << 20
MAX_BYTES = 512 << 20
_FILES: OrderedDict[str, dict[str, bytes]] = OrderedDict()  # key → file name → bytes


def key(family: str, model: nn.Module, args: tuple[Any, ...]) -> str | None:
    """The memo key of exporting `model` with `args`, or None when it is not remembered
    (a model over `MAX_MODEL_BYTES`)."""
    state = model.state_dict()
    if sum(t.numel() * t.element_size() for t in state.values()) > MAX_MODEL_BYTES:
        return None
    h = hashlib.sha256()
    cfg: Any = getattr(model, "config", None)
    head = {"family": family, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "tree": repr(model), "args": repr(args), "torch": torch.__version__,
            "config": (cfg.to_json_string() if cfg is not None and
                       hasattr(cfg, "to_json_string") else repr(cfg)),
            "attn": getattr(cfg, "_attn_implementation", None)}
    h.update(json.dumps(head, sort_keys=True).encode())
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + ".data")) if p.is_file()]


def store(k: str, path: Path) -> None:
    """Remember the export at `path` (and its `.data` file, if any) under key `k`."""
    files = {p.name: p.read_bytes() for p in _files(path)}
    size = sum(map(len, files.values()))
    if size > MAX_BYTES:
        return
    _FILES[k] = files
    _FILES.move_to_end(k)
    while sum(len(b) for fs in _FILES.values() for b in fs.values()) > MAX_BYTES:
        _FILES.popitem(last=False)


def restore(k: str, path: Path) -> bool:
    """Write the export remembered under `k` to `path` (same file names beside it);
    False when there is none."""
    files = _FILES.get(k)
    if files is None:
        return False
    _FILES.move_to_end(k)
    for name, data in files.items():  # the key holds the file name: .data refs stay true
        dst = path.with_name(name)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dst)
    return True


def clear() -> None:
    """Forget every remembered export."""
    _FILES.clear()
