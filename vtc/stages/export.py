"""Stage 2, export: write baseline.onnx, the uncompressed graph both engines start from.

An HF model is exported by the dynamo exporter (a symbolic batch, or static shapes
where the load stage chose a static batch: `stages.load.batch_axis`). An ONNX source
is written as the passes see it: pinned to the build batch and folded (so both
engines run the same static shapes), or unchanged when the batch stays dynamic (its
axis names, e.g. optimum's `batch_size`, kept); external data is read in and the
file is written inline — or, past protobuf's 2 GB limit
(`passes.model_io.INLINE_LIMIT_BYTES`), with its weights in `baseline.onnx.data`.
`to_static` pins a dynamic baseline when the compressed graph cannot keep its
symbolic batch and the recipe did not insist on one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir

from vtc.exporter.export import export_onnx
from vtc.passes import load as load_pinned
from vtc.passes.dynamic_batch import BATCH
from vtc.passes.model_io import input_dims, save_model
from vtc.recipe import RecipeBase
from vtc.stages.load import Loaded


@dataclass
class Exported:
    baseline: Path  # baseline.onnx
    batch: int  # the build (and timing) batch
    size: tuple[int, int]  # the image input's (height, width), pixels
    channels: int  # the image input's channels
    dynamic: bool  # the graph's batch is symbolic
    opset: int | None  # the default-domain opset the file declares
    dynamic_required: bool = False  # export.dynamic_batch: true (no static fallback)
    batch_name: str = BATCH  # the symbolic batch axis's name in the file (dynamic only)


def declared_opset(path: Path) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
                None)


def export(loaded: Loaded, recipe: RecipeBase, tmp: Path,
           log: Callable[[str], None] = lambda _msg: None) -> Exported:
    """`loaded` → tmp/baseline.onnx (see the module docstring)."""
    path = tmp / "baseline.onnx"
    dynamic = loaded.dynamic
    if loaded.family is not None:
        export_onnx(loaded.family, loaded.model, loaded.batch, loaded.hw, path,
                    opset=recipe.export.opset, dynamic_batch=dynamic)
    elif loaded.graph is not None:
        save_model(loaded.graph, path)
    else:
        assert loaded.proto is not None
        save_model(ir.from_proto(loaded.proto), path)
    first = input_dims(path, loaded.pre.name)[:1]
    name = first[0] if first and isinstance(first[0], str) and first[0] != "?" else BATCH
    return Exported(path, loaded.batch, loaded.hw, loaded.pre.channels, dynamic,
                    declared_opset(path), loaded.dynamic_required, name)


def to_static(exported: Exported) -> Exported:
    """baseline.onnx rewritten pinned to the build batch and folded (as a static-batch
    ONNX source is): for when the compressed graph cannot keep a symbolic batch."""
    save_model(load_pinned(exported.baseline, exported.batch, exported.size, exported.channels),
               exported.baseline)
    return Exported(exported.baseline, exported.batch, exported.size, exported.channels,
                    False, declared_opset(exported.baseline))
