"""Reading and preparing an ONNX model for the passes.

`read_onnx` opens a file with its external data and refuses, in one line, what is
not a readable ONNX model. `prepare` normalises a model in place: symbolic input
dims pinned (batch, channels, height/width), constants and shape computations
folded, uniform attention masks shrunk, static shapes inferred for every value:

    before:  pixel_values[batch, 3, height, width] ─► … Shape ─► Gather ─► Reshape(…)
    after:   pixel_values[8, 3, 224, 224]          ─► … Reshape([8, 197, 6, 64])

so that every baked token count sits in a constant the shape fix-up can rewrite.
`check` runs strict shape inference and the ONNX checker on a rewritten model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import RemoveUnusedNodesPass, ShapeInferencePass

from vtc.passes.graph import GraphError, initializer, is_const, static_dims

# Protobuf refuses single files over 2 GiB: a graph whose tensors exceed this many bytes
# is written with its weights in `<name>.data` beside it (read at call time, so a test
# can lower it).
INLINE_LIMIT_BYTES = 1_800_000_000


def tensor_bytes(model: ir.Model) -> int:
    """Bytes held by the model's initializers (what an inline file would carry)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None)


def unused_initializers(model: ir.Model) -> list[str]:
    """Initializers no node reads and that are no graph input or output (ONNX Runtime
    logs a "Removing initializer … It is not used by any node" warning per one)."""
    graph = model.graph
    ends = {id(v) for v in [*graph.inputs, *graph.outputs]}
    return sorted(str(name) for name, v in graph.initializers.items()
                  if not v.uses() and id(v) not in ends)


def save_model(model: ir.Model, path: Path) -> None:
    """Write `model` to `path` without dead nodes or unused initializers: inline, or with
    external data in `<path name>.data` beside it when its tensors exceed
    `INLINE_LIMIT_BYTES`."""
    RemoveUnusedNodesPass()(model)
    if tensor_bytes(model) > INLINE_LIMIT_BYTES:
        ir.save(model, path, external_data=f"{path.name}.data")
    else:
        ir.save(model, path)


def input_dims(path: Path, name: str | None = None) -> list[int | str]:
    """The declared shape of graph input `name` (default: the first) of the file at
    `path`: numbers, or the names of symbolic dims (`batch_size`; "?" when unnamed)."""
    proto = onnx.load(str(path), load_external_data=False)
    vi = next((i for i in proto.graph.input if name is None or i.name == name),
              proto.graph.input[0])
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]


def graph_inputs(model: onnx.ModelProto) -> dict[str, tuple[list[int | None], np.dtype]]:
    """The graph's inputs that are not initializers → (dims, None where symbolic;
    their numpy dtype)."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[inp.name] = (dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
    return out


def external_files(path: Path) -> list[Path]:
    """The external data files an ONNX file names (relative to its folder), sorted."""
    proto = onnx.load(str(path), load_external_data=False)
    return sorted({path.parent / e.value for t in _tensors(proto.graph)
                   if t.data_location == onnx.TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "location"})


def read_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX file with its external data (any layout the onnx package writes,
    e.g. the dynamo exporter's `x.onnx.data`), refusing with one line what is not a
    readable ONNX model: GraphError names the file and the fix."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise GraphError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc}); "
                         "give a model saved by torch.onnx.export or onnx.save") from exc
    if not proto.graph.node or not proto.graph.input:
        raise GraphError(f"{path}: not an ONNX model (no graph nodes or inputs; empty, "
                         "truncated or another kind of file); give a valid .onnx file")
    newest = onnx.defs.onnx_opset_version()
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not 7 <= opset <= newest:
        raise GraphError(f"{path}: ONNX opset {opset}, outside the 7..{newest} that onnx "
                         f"{onnx.__version__} and ONNX Runtime read; export the model again "
                         "(e.g. torch.onnx.export(..., opset_version=18))")
    if not 3 <= proto.ir_version <= onnx.IR_VERSION:
        raise GraphError(f"{path}: ONNX IR version {proto.ir_version}, outside the 3.."
                         f"{onnx.IR_VERSION} this onnx reads; export the model again")
    missing = sorted({
        entry.value for t in _tensors(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location" and not (path.parent / entry.value).is_file()
    })
    if missing:
        raise GraphError(f"{path}: its weights live in external data file(s) "
                         f"{', '.join(missing)}, not found next to it; copy them beside the "
                         ".onnx file")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise GraphError(f"{path}: cannot read its external data ({exc}); check the "
                         ".onnx.data file beside it") from exc
    return proto


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and Constant-node tensors of a graph (subgraphs included)."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                out.append(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                out += _tensors(attr.g)
    return out


ImageSize = int | tuple[int, int]  # a square side, or (height, width)


def load(path: Path | str, batch: int | None = None, image_size: ImageSize | None = None,
         channels: int | None = None) -> ir.Model:
    """Load an ONNX file, pin symbolic input dims (batch → `batch`, channels →
    `channels` or 3, height/width → `image_size`), fold constants and shape
    computations, and infer static shapes for every value."""
    return prepare(ir.from_proto(read_onnx(path)), batch, image_size, channels)


def _pin_inputs(graph: ir.Graph, batch: int | None, image_size: ImageSize | None,
                channels: int | None = None) -> None:
    """Give every symbolic input dim a static value (exporters such as optimum
    write `[batch_size, num_channels, height, width]`)."""
    hw = (image_size, image_size) if isinstance(image_size, int) else image_size
    for inp in graph.inputs:
        if inp.shape is None:
            continue
        dims = list(inp.shape)
        for i, d in enumerate(dims):
            if isinstance(d, int):
                continue
            if i == 0:
                if batch is None:
                    raise GraphError(f"input {inp.name!r} has a symbolic batch; pass --batch N")
                dims[i] = batch
            elif i == 1 and len(dims) == 4:
                dims[i] = channels or 3
            elif i >= 2 and len(dims) == 4:
                if hw is None:
                    raise GraphError(
                        f"input {inp.name!r} has a symbolic height/width ({d}); give the "
                        "resolution to build for (vtc-export: --set export.image_size=224; "
                        "vtc inspect: --image-size 224)"
                    )
                dims[i] = hw[i - 2]
            else:
                raise GraphError(f"input {inp.name!r} has a symbolic dim {d!r} at axis {i}; "
                                 "export the model with static shapes")
        inp.shape = ir.Shape(dims)


# Constant subgraphs up to this many elements are folded; larger ones (a [B, 1, N, N]
# attention mask at a large batch) are left to the runtime or shrunk below.
FOLD_LIMIT = 1 << 22
# Ops through which a uniform constant only broadcasts.
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Not", "And", "Or", "Equal"}


# onnxscript's default rewrite rules, less `SlicesSplit` (two Slices of one tensor's last
# axis halves → Split: the rotate-half of rotary embeddings). It is a two-output pattern
# tried against every pair of Slices, and vtc's merge steps emit many: on a 12-block
# ToMe graph it took 4 of the optimizer's 5.5 s per call, and no pass of vtc reads a
# Split. The rest of the optimizer runs as onnxscript ships it.
_SKIPPED_RULES = frozenset({"SlicesSplit"})


@contextlib.contextmanager
def _rules_without_slices_split() -> Iterator[bool]:
    """onnxscript's rule table without `_SKIPPED_RULES` while the block runs; yields
    whether the table was found (an onnxscript that renamed it runs unchanged)."""
    import onnxscript.rewriter as rewriter

    table = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if not isinstance(table, tuple):
        yield False
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in table if getattr(r, "name", None) not in _SKIPPED_RULES)
    try:
        yield True
    finally:
        rewriter._DEFAULT_REWRITE_RULES = table


def infer_shapes(model: ir.Model) -> None:
    """onnx_ir's non-strict shape inference, in place. Where ONNX's inference fails it
    leaves the model as it is and logs a warning with a traceback; quieted here: the
    passes that need a shape name the node whose shape is missing."""
    log = logging.getLogger("onnx_ir.passes.common.shape_inference")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        ShapeInferencePass(strict_mode=False)(model)
    finally:
        log.setLevel(level)


def _optimize(model: ir.Model) -> ir.Model:
    log = logging.getLogger("onnxscript")
    level = log.level
    log.setLevel(logging.ERROR)  # it logs every constant it declines to fold
    try:
        with _rules_without_slices_split():
            return onnxscript.optimizer.optimize(model, input_size_limit=FOLD_LIMIT,
                                                 output_size_limit=FOLD_LIMIT)
    finally:
        log.setLevel(level)


def _broadcast_only(v: ir.Value, rank: int, depth: int = 0) -> bool:
    """v only meets elementwise ops that also see a full-rank non-constant operand
    (so the result's shape never depends on v's shape)."""
    for user in v.consumers():
        if user.op_type not in _BROADCAST or user.outputs[0].is_graph_output():
            return False
        others = [i for i in user.inputs if i is not None and i is not v]
        if any(not is_const(i) and len(static_dims(i) or []) >= rank for i in others):
            continue
        if depth >= 4 or not all(_broadcast_only(o, rank, depth + 1) for o in user.outputs):
            return False
    return True


def _shrink_uniform_expands(graph: ir.Graph) -> int:
    """Expand(uniform constant, [B, 1, N, N]) feeding only broadcasts → a [1, 1, 1, 1]
    constant. Exporters write additive attention masks this way; shrunk, they no
    longer bake the batch and token counts (and fold at any batch size)."""
    shrunk = 0
    for node in list(graph):
        if node.op_type != "Expand" or not is_const(node.inputs[0]):
            continue
        arr = node.inputs[0].const_value.numpy()  # type: ignore[union-attr]
        out = node.outputs[0]
        dims = static_dims(out)
        if arr.size == 0 or not (arr == arr.flat[0]).all() or not dims:
            continue
        if not _broadcast_only(out, len(dims)):
            continue
        small = np.full([1] * len(dims), arr.flat[0], dtype=arr.dtype)
        out.replace_all_uses_with(initializer(graph, small, f"{out.name}_uniform"))
        graph.remove(node, safe=True)
        shrunk += 1
    return shrunk


def _fold_constant_of_shape(graph: ir.Graph) -> int:
    """ConstantOfShape of a constant shape → an initializer (the optimizer leaves
    these, and TorchScript exports build `expand(B, -1, -1)` shapes from them)."""
    folded = 0
    for node in list(graph):
        if node.op_type != "ConstantOfShape" or not is_const(node.inputs[0]):
            continue
        shape = node.inputs[0].const_value.numpy().astype(np.int64)  # type: ignore[union-attr]
        if int(np.prod(shape)) > FOLD_LIMIT:
            continue
        attr = node.attributes.get("value")
        fill = attr.value.numpy().ravel() if attr is not None else np.zeros(1, np.float32)
        arr = np.full(shape, fill[0], dtype=fill.dtype)
        out = node.outputs[0]
        out.replace_all_uses_with(initializer(graph, arr, f"{out.name}_folded"))
        graph.remove(node, safe=True)
        folded += 1
    return folded


def prepare(model: ir.Model, batch: int | None = None, image_size: ImageSize | None = None,
            channels: int | None = None) -> ir.Model:
    """Normalise a model in place for the passes; returns it.

    Shape computations and constant subgraphs are folded so that every baked
    token count sits in a constant the shape fix-up can rewrite."""
    _pin_inputs(model.graph, batch, image_size, channels)
    model = _optimize(model)
    if _fold_constant_of_shape(model.graph) + _shrink_uniform_expands(model.graph):
        model = _optimize(model)
    _clear_shapes(model.graph)
    infer_shapes(model)
    return model


def _clear_shapes(graph: ir.Graph) -> None:
    for node in graph:
        for out in node.outputs:
            out.shape = None  # graph outputs too: a symbolic batch there is pinned now


def check(model: ir.Model) -> None:
    """Strict shape inference and the ONNX checker on the whole model."""
    proto = ir.to_proto(model)
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise GraphError(f"the rewritten graph fails the ONNX checker: {exc}") from exc
