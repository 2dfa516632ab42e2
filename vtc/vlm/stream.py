"""An eager model whose language-model layers stay on disk: each weight matrix is read
from the checkpoint's safetensors files when its module runs, in fp32, and dropped
when the module returns. What a 7B-class VLM's eager reference needs on a machine
that cannot hold its LM in fp32 (about 28 GB for Llama-2-7B).

    resident (`vtc.vlm.llava.load`):
        vision tower, projector, embed_tokens, norm, lm_head, rotary: fp32 in memory
        layers[0..L-1]: fp32 in memory                               (4 · P_lm bytes)

    streamed (`load`):
        vision tower, projector, embed_tokens, norm, lm_head, rotary: fp32 in memory
        layers[0..L-1]: on the meta device; each module that holds parameters
            (q_proj, …, down_proj, the two norms) gets a forward pre-hook that loads its
            tensors from the checkpoint (fp32) and a forward hook that puts them back on
            the meta device                                   (one matrix at a time)

The arithmetic is the resident model's, operation for operation (same modules, same
fp32 weights), so a streamed reference's tokens and logits equal the resident one's
(tests/vlm/test_stream.py holds them equal); only the time changes: every forward pass
re-reads the LM's tensors (from the page cache once the files were read once). Callers
that bypass a module's forward (calling ``module.weight`` directly) see a meta tensor
and fail loudly rather than silently.

Shapes are the model's own; nothing here changes a tensor's shape or dtype beyond the
checkpoint's → fp32 conversion.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vtc.errors import InputError

# above this share of the machine's memory, the LM's fp32 layers are streamed (`wanted`)
STREAM_SHARE = 0.4


def lm_layer_bytes(text_config: Any) -> int:
    """Bytes of the LM's decoder layers in fp32 (projections, MLP and norms)."""
    d, f = text_config.hidden_size, text_config.intermediate_size
    heads = text_config.num_attention_heads
    kv = getattr(text_config, "num_key_value_heads", None) or heads
    hd = getattr(text_config, "head_dim", None) or d // heads
    per = d * hd * (2 * heads + 2 * kv) + 3 * d * f + 2 * d
    return 4 * text_config.num_hidden_layers * per


def memory_bytes() -> int:
    """This machine's physical memory (bytes; 0 where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def wanted(setting: str | bool, text_config: Any) -> bool:
    """Whether to stream: ``true``/``false`` as set, ``auto`` when the LM's fp32 layers
    exceed `STREAM_SHARE` of this machine's memory."""
    if setting != "auto":
        return bool(setting)
    total = memory_bytes()
    return total > 0 and lm_layer_bytes(text_config) > STREAM_SHARE * total


class TensorIndex:
    """Where each tensor of a safetensors checkpoint lives: name → file. Files are
    opened per read (no mapping outlives a read, so resident memory holds only what a
    caller keeps)."""

    def __init__(self, ckpt: Path) -> None:
        from safetensors import safe_open

        from .decoder import shard_files

        self.where: dict[str, Path] = {}
        for f in shard_files(ckpt):
            with safe_open(str(f), "pt") as st:
                self.where.update(dict.fromkeys(st.keys(), f))

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as fp32 (a copy owned by the caller)."""
        from safetensors import safe_open

        with safe_open(str(self.where[name]), "pt") as st:
            t = st.get_tensor(name)
        return t.to(torch.float32) if t.dtype != torch.float32 else t.clone()


def _stream_module(module: nn.Module, names: dict[str, str], index: TensorIndex) -> None:
    """Hooks on `module` (which holds parameters `names`: attribute → checkpoint key)
    that load them before its forward and drop them after."""
    shapes = {a: tuple(module._parameters[a].shape) for a in names}  # type: ignore[union-attr]

    def load(mod: nn.Module, _args: Any) -> None:
        for attr, key in names.items():
            t = index.read(key)
            if tuple(t.shape) != shapes[attr]:
                raise InputError(f"checkpoint tensor {key} has shape {list(t.shape)}, the "
                                 f"config implies {list(shapes[attr])}")
            mod._parameters[attr] = nn.Parameter(t, requires_grad=False)

    def drop(mod: nn.Module, _args: Any, _out: Any) -> None:
        for attr in names:
            mod._parameters[attr] = nn.Parameter(
                torch.empty(shapes[attr], device="meta"), requires_grad=False)

    module.register_forward_pre_hook(load)
    module.register_forward_hook(drop)


def stream_layers(lm: nn.Module, index: TensorIndex, key_of: Callable[[int, str], str | None]
                  ) -> int:
    """Replace `lm.layers` (a decoder's ``ModuleList``, maybe empty) by the config's
    layers on the meta device, streamed from `index`; `key_of(i, "self_attn.q_proj.weight")`
    is the checkpoint name of layer i's parameter. Returns the streamed tensors' count."""
    m: Any = lm
    cfg = m.config
    with torch.device("meta"):
        full = type(lm)(cfg)  # the layers as the LM builds them, no memory
    layers: Any = full.layers
    count = 0
    for i, layer in enumerate(layers):
        for mod_name, mod in layer.named_modules():
            own = [a for a, p in mod._parameters.items() if p is not None]
            if not own:
                continue
            names: dict[str, str] = {}
            for a in own:
                local = f"{mod_name}.{a}" if mod_name else a
                key = key_of(i, local)
                if key is None or key not in index.where:
                    raise InputError(f"the checkpoint has no tensor for LM layer {i}'s "
                                     f"{local} (looked for {key}); it is not a checkpoint of "
                                     "this config")
                names[a] = key
            _stream_module(mod, names, index)
            count += len(names)
    m.layers = layers
    return count


def without_layers(config: Any) -> Any:
    """A copy of a VLM `config` whose text model has no decoder layers (what is loaded
    into memory before `stream_layers` adds them back on the meta device)."""
    cfg = copy.deepcopy(config)
    cfg.text_config.num_hidden_layers = 0
    if getattr(cfg.text_config, "layer_types", None):
        cfg.text_config.layer_types = []
    return cfg
