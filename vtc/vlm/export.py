"""Export a LLaVA model's vision graph (vtc.vlm.modules) to ONNX, onnxruntime-genai
naming (the embedding graph is `vtc.vlm.embedding`, the decoder `vtc.vlm.decoder`):

    vision.onnx   pixel_values[1, 3, H, W]  → image_features[1, K, D]

With encoder cuts (tome, evit in the tower) the vision graph is built in two parts:
the uncut tower up to the feature layer (`export_tower_body`, which the encoder passes
rewrite like any encoder) and the rest at the cut token count (`export_tower_tail`),
joined by `stages.vlm`. One image per call; K static. The TorchScript exporter writes
each graph into a scratch directory; `passes.model_io.save_model` then writes it
inline, or with one ``NAME.data`` beside it past protobuf's limit.
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
from .modules import TowerBody, TowerTail, VisionEncoder
from .plan import Cuts

OPSET = 17
FEATURES = "image_features"


def export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path,
                 inputs: list[str], outputs: list[str],
                 axes: dict[str, dict[int, str]] | None = None) -> Path:
    """`module` traced on `args` by the TorchScript exporter into `path` (names as
    given; static shapes unless `axes`)."""
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


def export_vision(model: nn.Module, geo: VlmGeometry, cuts: Cuts, path: Path) -> Path:
    px = torch.randn(1, 3, geo.image_size, geo.image_size)
    return export_graph(VisionEncoder(model, geo, cuts).eval(), (px,), path, ["pixel_values"],
                   [FEATURES])


def export_tower_body(model: nn.Module, geo: VlmGeometry, path: Path) -> Path:
    """The uncut tower up to the feature layer (for the encoder passes)."""
    px = torch.randn(1, 3, geo.image_size, geo.image_size)
    return export_graph(TowerBody(model, geo).eval(), (px,), path, ["pixel_values"], ["hidden"])


def export_tower_tail(model: nn.Module, geo: VlmGeometry, cuts: Cuts, tokens: int,
                      sizes: bool, path: Path) -> Path:
    """Layer F + selection + VisionZip + projector at `tokens` tokens in; with `sizes`
    it also reads ``token_sizes[1, tokens]`` (proportional attention in layer F)."""
    args: tuple[torch.Tensor, ...] = (torch.randn(1, tokens, geo.vision_width),)
    inputs = ["hidden"]
    if sizes:
        args = (*args, torch.ones(1, tokens))
        inputs.append("token_sizes")
    return export_graph(TowerTail(model, geo, cuts, sizes).eval(), args, path, inputs,
                   [FEATURES])
