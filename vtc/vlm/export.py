"""Export a LLaVA model's graphs (vtc.vlm.modules) to ONNX, onnxruntime-genai naming.

    vision.onnx   pixel_values[1, 3, H, W]                      → image_embeds[1, K, D]
    embed.onnx    input_ids[1, S]                               → inputs_embeds[1, S, D]
    prefill.onnx  inputs_embeds[1, P, D], attention_mask[1, P],
                  position_ids[1, P] (+ image_start[1] with FastV) → logits[1, vocab],
                                                                  present.N.key/value
    decode.onnx   inputs_embeds[1, 1, D], attention_mask[1, T+1],
                  position_ids[1, 1], past_key_values.N.key/value → logits, present.N.*

With encoder cuts (tome, evit in the tower) the vision graph is built in two parts:
the uncut tower up to the feature layer (`export_tower_body`, which the encoder passes
rewrite like any encoder) and the rest at the cut token count (`export_tower_tail`),
joined by `stages.vlm`. Batch 1 (one conversation per call, as `vtc generate` runs);
P and K static; the
decode graph's cache lengths are symbolic: ``past_sequence_length`` for layers before
a FastV cut and ``past_sequence_length_cut`` from it on. The TorchScript exporter
writes each graph into a scratch directory (it is lenient with the decode graph's
symbolic lengths); `passes.model_io.save_model` then writes it inline, or with one
``NAME.data`` beside it past protobuf's limit.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx_ir as ir
import torch
from torch import nn

from vtc.exporter.export import _quiet_exporter
from vtc.passes import model_io

from .llava import VlmGeometry
from .modules import Cuts, Decode, Embed, Prefill, TowerBody, TowerTail, VisionEncoder

OPSET = 17
GRAPHS = ("vision", "embed", "prefill", "decode")


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
            inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]] | None = None) -> Path:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as scratch:
        tmp = Path(scratch) / "graph.onnx"
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, do_constant_folding=True)
        model = ir.load(str(tmp))
        _inline_attribute_tensors(model)
        publish(model, path, Path(scratch))
    return path


def _inline_attribute_tensors(model: ir.Model) -> int:
    """Read into memory the Constant-attribute tensors the TorchScript exporter wrote to
    files of their own (it does for a model past 2 GB); saving externalises only
    initializers, so such a reference would point into the scratch dir."""
    count = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for name, attr in list(node.attributes.items()):
            value = attr.value
            if attr.type == ir.AttributeType.TENSOR and isinstance(value, ir.ExternalTensor):
                node.attributes[name] = ir.AttrTensor(name, ir.Tensor(value.numpy(),
                                                                      name=value.name))
                count += 1
    return count


def publish(model: ir.Model, path: Path, scratch: Path) -> None:
    """Save `model` under its final name inside `scratch` (inline, or with
    ``NAME.data`` referenced by that final name), then move the file(s) to `path`."""
    staged = scratch / "final" / path.name
    staged.parent.mkdir()
    model_io.save_model(model, staged)
    data = staged.with_name(staged.name + ".data")
    if data.exists():
        os.replace(data, path.with_name(data.name))
    os.replace(staged, path)


def names(layers: int, kind: str) -> list[str]:
    """``past_key_values.N.key/value`` (kind "past") or ``present.N.key/value``."""
    stem = "past_key_values" if kind == "past" else "present"
    return [f"{stem}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def export_vision(model: nn.Module, geo: VlmGeometry, cuts: Cuts, path: Path) -> Path:
    px = torch.randn(1, 3, geo.image_size, geo.image_size)
    return _export(VisionEncoder(model, geo, cuts).eval(), (px,), path, ["pixel_values"],
                   ["image_embeds"])


def export_tower_body(model: nn.Module, geo: VlmGeometry, path: Path) -> Path:
    """The uncut tower up to the feature layer (for the encoder passes)."""
    px = torch.randn(1, 3, geo.image_size, geo.image_size)
    return _export(TowerBody(model, geo).eval(), (px,), path, ["pixel_values"], ["hidden"])


def export_tower_tail(model: nn.Module, geo: VlmGeometry, cuts: Cuts, tokens: int,
                      sizes: bool, path: Path) -> Path:
    """Layer F + selection + VisionZip + projector at `tokens` tokens in; with `sizes`
    it also reads ``token_sizes[1, tokens]`` (proportional attention in layer F)."""
    args: tuple[torch.Tensor, ...] = (torch.randn(1, tokens, geo.vision_width),)
    inputs = ["hidden"]
    if sizes:
        args = (*args, torch.ones(1, tokens))
        inputs.append("token_sizes")
    return _export(TowerTail(model, geo, cuts, sizes).eval(), args, path, inputs,
                   ["image_embeds"])


def export_embed(model: nn.Module, path: Path) -> Path:
    ids = torch.zeros(1, 4, dtype=torch.long)
    return _export(Embed(model).eval(), (ids,), path, ["input_ids"], ["inputs_embeds"],
                   {"input_ids": {1: "sequence_length"}, "inputs_embeds": {1: "sequence_length"}})


def export_prefill(model: nn.Module, geo: VlmGeometry, cuts: Cuts, path: Path) -> Path:
    p = cuts.prefill
    args: tuple[torch.Tensor, ...] = (
        torch.randn(1, p, geo.lm_width), torch.ones(1, p, dtype=torch.long),
        torch.arange(p)[None])
    inputs = ["inputs_embeds", "attention_mask", "position_ids"]
    if cuts.fastv is not None:
        args = (*args, torch.zeros(1, dtype=torch.long))
        inputs.append("image_start")
    return _export(Prefill(model, geo, cuts).eval(), args, path, inputs,
                   ["logits", *names(geo.lm_layers, "present")])


def cache_lengths(geo: VlmGeometry, cuts: Cuts) -> list[int]:
    """Cache entries per layer after a full prefill."""
    cut = cuts.fastv[0] if cuts.fastv is not None else geo.lm_layers
    return [cuts.prefill if i < cut else cuts.lm_tokens for i in range(geo.lm_layers)]


def export_decode(model: nn.Module, geo: VlmGeometry, cuts: Cuts, path: Path) -> Path:
    lengths = cache_lengths(geo, cuts)
    past = [torch.randn(1, geo.kv_heads, n, geo.head_dim) for n in lengths for _ in range(2)]
    args = (torch.randn(1, 1, geo.lm_width), torch.ones(1, cuts.prefill + 1, dtype=torch.long),
            torch.tensor([[cuts.prefill]]), *past)
    inputs = ["inputs_embeds", "attention_mask", "position_ids", *names(geo.lm_layers, "past")]
    outputs = ["logits", *names(geo.lm_layers, "present")]
    axes: dict[str, dict[int, str]] = {"attention_mask": {1: "total_sequence_length"}}
    cut = cuts.fastv[0] if cuts.fastv is not None else geo.lm_layers
    for i in range(geo.lm_layers):
        dim = "past_sequence_length" if i < cut else "past_sequence_length_cut"
        for kv in ("key", "value"):
            axes[f"past_key_values.{i}.{kv}"] = {2: dim}
            axes[f"present.{i}.{kv}"] = {2: dim + "_plus_1"}
    return _export(Decode(model, geo).eval(), args, path, inputs, outputs, axes)


def export_all(model: nn.Module, geo: VlmGeometry, cuts: Cuts, folder: Path,
               vision: bool = True) -> dict[str, Path]:
    """The graphs of the bundle into `folder` (``GRAPHS`` names; the vision graph only
    with `vision`: a recipe with encoder cuts builds it from rewritten parts)."""
    return {
        **({"vision": export_vision(model, geo, cuts, folder / "vision.onnx")} if vision
           else {}),
        "embed": export_embed(model, folder / "embed.onnx"),
        "prefill": export_prefill(model, geo, cuts, folder / "prefill.onnx"),
        "decode": export_decode(model, geo, cuts, folder / "decode.onnx"),
    }
