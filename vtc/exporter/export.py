"""Export a family's model to ONNX with static shapes.

The exported graph takes ``pixel_values[batch, C, H, W]``
(float32) and returns the family's outputs (``logits`` or ``pooler_output``)
with every dimension static, so the token dimension of every block is a
constant the ONNX passes can rewrite.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vtc.passes import model_io

from . import memo as _memo
from .registry import Family


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and informational logging."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _param_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def export_onnx(
    family: Family,
    model: nn.Module,
    batch: int,
    image_size: int | tuple[int, int],
    path: Path,
    opset: int = 18,
    dynamo: bool = True,
    dynamic_batch: bool = False,
) -> Path:
    """Export ``model`` (a model of ``family``) to ``path`` and return ``path``.

    Input ``pixel_values[batch, C, H, W]`` (``image_size``: a side, or (H, W)); outputs named
    ``family.output_names(model)``; all shapes static (the model is put in float32
    eval mode in place). ``dynamo=False`` uses the
    TorchScript exporter (opset capped at 17). ``dynamic_batch`` makes axis 0
    of the input and outputs symbolic (``batch``); ``batch`` is then only the
    example's size. Weights are stored inline unless
    they exceed ``passes.model_io.INLINE_LIMIT_BYTES`` (~1.8 GB, protobuf's 2 GB limit),
    in which case they go to ``<path>.data`` next to it.
    The file is written to a temporary name in the same directory and moved
    into place, so ``path`` is never left half-written. A model exported before in this
    process with the same weights and arguments is written from memory
    (`vtc.exporter.memo`: `vtc sweep` exports its checkpoint once).
    """
    model = model.float().eval()
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    inline = _param_bytes(model) <= model_io.INLINE_LIMIT_BYTES
    key = _memo.key(family.name, model, (batch, h, w, opset, dynamo, dynamic_batch, inline,
                                         tuple(family.output_names(model)), Path(path).name))
    if key is not None and _memo.restore(key, path):
        return path
    wrapper = family.wrap_for_export(model)
    channels = family.num_channels(model)
    example = torch.randn(batch, channels, h, w, dtype=torch.float32)
    export_module(wrapper, (example,), ["pixel_values"], list(family.output_names(model)),
                  path, opset=opset, dynamo=dynamo, dynamic_batch=dynamic_batch,
                  inline=inline)
    if key is not None:
        _memo.store(key, path)
    return path


def export_module(
    wrapper: nn.Module,
    examples: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    opset: int = 18,
    dynamo: bool = True,
    dynamic_batch: bool = False,
    inline: bool = True,
) -> Path:
    """Export ``wrapper(*examples)`` (a tuple of tensors out) to ``path`` with these input
    and output names; the machinery of :func:`export_onnx` for any graph (the CLIP text
    tower's ``input_ids``/``attention_mask`` → ``text_embeds`` too): axis 0 of every input
    and output symbolic with ``dynamic_batch``, written to a temporary name and moved into
    place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with _quiet_exporter(), torch.no_grad():
            if dynamo:
                _export_dynamo(wrapper, examples, tmp, path, opset, input_names, output_names,
                               inline, dynamic_batch)
            else:
                torch.onnx.export(
                    wrapper,
                    examples,
                    str(tmp),
                    dynamo=False,
                    opset_version=min(opset, 17),
                    input_names=input_names,
                    output_names=output_names,
                    do_constant_folding=True,
                    verbose=False,
                    dynamic_axes=(
                        {n: {0: "batch"} for n in [*input_names, *output_names]}
                        if dynamic_batch else None
                    ),
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_dynamo(
    wrapper: nn.Module,
    examples: tuple[torch.Tensor, ...],
    tmp: Path,
    path: Path,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    inline: bool,
    dynamic_batch: bool = False,
) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = tuple({0: batch} for _ in examples) if dynamic_batch else None
    program = torch.onnx.export(
        wrapper,
        examples,
        dynamic_shapes=dims,
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        external_data=not inline,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    if inline:
        program.save(str(tmp), external_data=False)
        return
    import onnx_ir

    # Large model: weights next to the final file, referenced by its final name.
    data_name = path.name + ".data"
    onnx_ir.save(program.model, str(tmp), external_data=data_name)
