"""TensorRT 10 ONNX-parser lint: every node, attribute and dtype of a graph checked
against the parser's documented limits, without TensorRT installed (onnx + numpy only).

Sources (facts taken from them; the wording and code here are vtc's own):

* onnx/onnx-tensorrt `docs/operators.md` at commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc
  (its TensorRT 8.5 matrix, the newest revision that could be read here: which ops the
  parser refuses; per-op restrictions such as TopK's `K` being an initializer, the
  `axes` inputs of Slice/Squeeze/Unsqueeze and CumSum's `axis` being constants, Resize's
  modes, DequantizeLinear's zero point; DOUBLE cast down to FLOAT, clamped at ±FLT_MAX);
* NVIDIA's TensorRT operator reference, TopK (docs.nvidia.com/deeplearning/tensorrt,
  10.x): `k <= 3840` and `k <=` the axis length; and the TensorRT 10.13 Python API as
  `tensorrt-stubs` 10.13.0.35.1 ships it (`tensorrt_bindings/tensorrt.pyi`): TopK "only
  values of K up to 3840", `InterpolationMode.CUBIC` resizing the innermost 2 dims only
  (cubic was not in the 8.5 matrix), `DataType` FLOAT, HALF, BF16, INT8, INT32, INT64,
  BOOL, UINT8 (network inputs/outputs only), FP8, INT4 — so INT64 is a TensorRT 10 type
  and is not flagged (TensorRT 8 narrowed INT64 to INT32, clamping at ±INT32_MAX);
* NVIDIA/TensorRT issues #2396, #3650, #3750 and onnx/onnx-tensorrt #957: TensorRT's
  scatter layer has no reduction; ScatterElements/ScatterND with `reduction` other than
  `none` are refused (or, in some releases, silently computed as `none`).

The table `CHECKS` maps an op type to its check function; `UNSUPPORTED` lists the ops
the parser refuses outright. An op in neither is a warning (not in the table: confirm
with `trtexec`). Data-dependent shapes (NonZero) are errors: vtc's budgets are static
and an engine with a data-dependent output shape needs an output allocator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from vtc.errors import InputError
from vtc.report import TrtFinding, TrtLintInfo

__all__ = ["CHECKS", "TOPK_MAX", "UNSUPPORTED", "TrtLintError", "format_finding", "lint",
           "lint_file", "summary"]

TOPK_MAX = 3840  # ITopKLayer: k <= 3840 (TensorRT 10.x operator reference)

UNSUPPORTED: frozenset[str] = frozenset({
    "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence",
    "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement",
    "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer",
    "Unique",
})

# ops the parser imports with no restriction that a lint can see
PLAIN: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "DepthToSpace", "Div",
    "Dropout", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor",
    "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization",
    "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "LRN",
    "LpNormalization", "LpPool", "MatMul", "Max", "Mean", "MeanVarianceNormalization", "Min",
    "Mish", "Mod", "Mul", "Neg", "Not", "OneHot", "Or", "Pad", "Pow", "PRelu", "Reciprocal",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Round",
    "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Softmax",
    "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "Transpose", "Trilu", "Where", "Xor",
})

P = onnx.TensorProto
# dtype → (severity, what TensorRT does, fix)
_DTYPES: dict[int, tuple[str, str, str]] = {
    P.DOUBLE: ("warning", "DOUBLE: TensorRT casts it down to FLOAT, clamping at ±FLT_MAX",
               "export in float32 (model.float() before export)"),
    P.UINT8: ("warning", "UINT8 is a TensorRT type only for network inputs and outputs",
              "Cast to float32 right at the input, or keep uint8 off inner tensors"),
    P.INT16: ("error", "INT16 is not a TensorRT type", "Cast to int32 in the exporter"),
    P.UINT16: ("error", "UINT16 is not a TensorRT type", "Cast to int32 in the exporter"),
    P.UINT32: ("error", "UINT32 is not a TensorRT type", "Cast to int32 (or int64)"),
    P.UINT64: ("error", "UINT64 is not a TensorRT type", "Cast to int64"),
    P.STRING: ("error", "STRING tensors are not supported by TensorRT",
               "move string handling out of the graph"),
    P.COMPLEX64: ("error", "complex tensors are not supported by TensorRT",
                  "split into real and imaginary float tensors"),
    P.COMPLEX128: ("error", "complex tensors are not supported by TensorRT",
                   "split into real and imaginary float tensors"),
}
_INT32 = np.iinfo(np.int32)


class TrtLintError(InputError):
    """A graph breaks a TensorRT parser limit and the recipe asks for TensorRT."""


@dataclass
class Graph:
    """What the checks read: constant values by name, each tensor's static shape
    (None where unknown), and the node list (Constant nodes' values folded in)."""

    consts: dict[str, np.ndarray]
    shapes: dict[str, list[int | None] | None]
    io: set[str]  # graph input and output names

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None


Check = Callable[[onnx.NodeProto, Graph], list[TrtFinding]]


def _f(node: onnx.NodeProto, problem: str, fix: str, severity: str = "error") -> TrtFinding:
    return TrtFinding(node.name or f"<{node.op_type} producing {list(node.output)}>",
                      node.op_type, problem, fix, severity)  # type: ignore[arg-type]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _topk(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    k = g.const(node.input[1]) if len(node.input) > 1 else None
    if k is None:
        return [_f(node, "K is computed at run time; TensorRT's TopK needs K as an "
                   "initializer or Constant", "make K a constant (a static budget: vtc's "
                   "emitter writes it as an initializer)")]
    kv = int(np.asarray(k).reshape(-1)[0])
    out: list[TrtFinding] = []
    if kv > TOPK_MAX:
        out.append(_f(node, f"K = {kv} exceeds TensorRT's TopK limit of {TOPK_MAX}",
                      f"keep K <= {TOPK_MAX} (split the axis, or sort with a smaller K)"))
    shape = g.shapes.get(node.input[0])
    axis = int(_attr(node, "axis", -1))  # type: ignore[call-overload]
    if shape and -len(shape) <= axis < len(shape):
        d = shape[axis]
        if d is not None and kv > d:
            out.append(_f(node, f"K = {kv} is larger than the axis ({d})", "lower K"))
    return out


def _scatter(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    red = _attr(node, "reduction", "none")
    if red != "none":
        return [_f(node, f"reduction={red!r}: TensorRT's scatter layer has no reduction "
                   "(refused, or computed as 'none' by some releases)",
                   "drop the reduction (scatter into zeros, then Add), or gather "
                   "instead of scatter")]
    return []


def _nonzero(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    return [_f(node, "data-dependent output shape: the engine cannot be static (TensorRT "
               "needs an output allocator for it)", "use a fixed count: TopK with a "
               "constant K, or a mask multiplied in, instead of NonZero")]


def _argminmax(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    if int(_attr(node, "select_last_index", 0)) != 0:  # type: ignore[call-overload]
        return [_f(node, "select_last_index=1: ties may resolve differently from ONNX "
                   "Runtime in TensorRT's reduction kernels", "use select_last_index=0 "
                   "(or break ties explicitly) and check parity on the device", "warning")]
    return []


def _const_input(index: int, what: str) -> Check:
    def check(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
        if len(node.input) > index and node.input[index] and \
                g.const(node.input[index]) is None:
            return [_f(node, f"{what} is computed at run time; the parser needs it as an "
                       "initializer or Constant", f"make {what} a constant (constant-fold "
                       "the graph: onnxsim or vtc's prepare)")]
        return []
    return check


_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                 "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _resized_axes(node: onnx.NodeProto, g: Graph) -> list[int] | None:
    """Axes a Resize changes (constant scales or sizes), or None when not known."""
    scales = g.const(node.input[2]) if len(node.input) > 2 else None
    if scales is not None and scales.size:
        return [i for i, s in enumerate(scales.reshape(-1)) if s != 1.0]
    sizes = g.const(node.input[3]) if len(node.input) > 3 else None
    shape = g.shapes.get(node.input[0])
    if sizes is not None and shape is not None and len(shape) == sizes.size:
        return [i for i, (a, b) in enumerate(zip(shape, sizes.reshape(-1), strict=True))
                if a != int(b)]
    return None


def _resize(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    out: list[TrtFinding] = []
    mode = _attr(node, "mode", "nearest")
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic"):
        out.append(_f(node, f"mode={mode!r} is not a Resize mode TensorRT knows",
                      "use nearest, linear or cubic"))
    if mode == "cubic":
        axes, rank = _resized_axes(node, g), len(g.shapes.get(node.input[0]) or [])
        if axes is None:
            out.append(_f(node, "mode='cubic' resizes only the innermost 2 dims in TensorRT; "
                          "which dims this node resizes is not known statically",
                          "constant-fold its scales/sizes (static shapes)", "warning"))
        elif rank and any(a < rank - 2 for a in axes):
            out.append(_f(node, f"mode='cubic' on dims {axes}: TensorRT's cubic resize acts "
                          "on the innermost 2 dims only", "resize the last two dims (move "
                          "the axes with a Transpose) or use linear"))
    if coord not in _RESIZE_COORD:
        out.append(_f(node, f"coordinate_transformation_mode={coord!r} is not supported",
                      f"use one of {', '.join(sorted(_RESIZE_COORD))}"))
    if mode == "nearest" and _attr(node, "nearest_mode", "round_prefer_floor") \
            not in _RESIZE_NEAREST:
        out.append(_f(node, "unsupported nearest_mode", "use floor, ceil or round_prefer_*"))
    if int(_attr(node, "antialias", 0)):  # type: ignore[call-overload]
        out.append(_f(node, "antialias=1 is not supported by TensorRT's resize layer",
                      "resize without antialias (or before the graph)"))
    return out


def _range(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    if any(g.const(i) is None for i in node.input):
        return [_f(node, "start/limit/delta computed at run time: floating-point Range "
                   "needs them constant, and the output length is data-dependent",
                   "fold Range to a constant (static shapes)", "warning")]
    return []


def _control(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    return [_f(node, f"{node.op_type}: control flow is imported, but branch/trip shapes "
               "must be static for a static engine and each subgraph is parsed separately",
               "unroll or constant-fold it; check with trtexec", "warning")]


def _maxpool(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    if len(node.output) > 1 and node.output[1]:
        return [_f(node, "MaxPool's Indices output is not supported", "drop the Indices "
                   "output (use ArgMax on the window if needed)")]
    return []


def _quant(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if zp is not None and np.any(np.asarray(zp) != 0):
        return [_f(node, "non-zero zero point: TensorRT quantization is symmetric",
                   "re-quantize with zero_point 0 (symmetric)")]
    return []


def _einsum(node: onnx.NodeProto, g: Graph) -> list[TrtFinding]:
    eq = str(_attr(node, "equation", ""))
    if "..." in eq:
        return [_f(node, f"equation {eq!r} uses an ellipsis, which TensorRT's Einsum "
                   "does not support", "spell out every axis (or use MatMul/Transpose)")]
    return []


CHECKS: dict[str, Check] = {
    "TopK": _topk,
    "Scatter": _scatter, "ScatterElements": _scatter, "ScatterND": _scatter,
    "NonZero": _nonzero,
    "ArgMax": _argminmax, "ArgMin": _argminmax,
    "Resize": _resize, "Upsample": _resize,
    "Range": _range,
    "Loop": _control, "If": _control, "Scan": _control,
    "MaxPool": _maxpool,
    "QuantizeLinear": _quant, "DequantizeLinear": _quant,
    "Einsum": _einsum,
    "Slice": _const_input(3, "Slice's axes"),
    "Squeeze": _const_input(1, "Squeeze's axes"),
    "Unsqueeze": _const_input(1, "Unsqueeze's axes"),
    "CumSum": _const_input(1, "CumSum's axis"),
}


def _read(model: onnx.ModelProto, base_dir: str) -> Graph:
    """Small constants (initializers and Constant nodes up to 4096 elements), static
    shapes from ONNX shape inference, the graph's input and output names."""
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= 4096:
            try:
                consts[t.name] = numpy_helper.to_array(t, base_dir)
            except (OSError, ValueError):  # external data missing: not a constant we read
                continue
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t, base_dir)
                elif a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    consts[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # inference is a help, not a requirement (e.g. > 2 GB protos)
        inferred = g
    shapes: dict[str, list[int | None] | None] = {}
    for vi in [*inferred.input, *inferred.value_info, *inferred.output]:
        tt = vi.type.tensor_type
        shapes[vi.name] = ([d.dim_value if d.HasField("dim_value") else None
                            for d in tt.shape.dim] if tt.HasField("shape") else None)
    return Graph(consts, shapes, {v.name for v in [*g.input, *g.output]})


def _dtypes(model: onnx.ModelProto) -> list[TrtFinding]:
    """One finding per problem dtype, naming the first tensors that carry it."""
    g = model.graph
    seen: dict[int, list[str]] = {}

    def note(dtype: int, name: str, io: bool) -> None:
        if dtype in _DTYPES and not (dtype == P.UINT8 and io):
            seen.setdefault(dtype, []).append(name)

    for t in g.initializer:
        note(t.data_type, t.name, False)
    io = {v.name for v in [*g.input, *g.output]}
    for vi in [*g.input, *g.output, *g.value_info]:
        note(vi.type.tensor_type.elem_type, vi.name, vi.name in io)
    for n in g.node:
        to = _attr(n, "to")
        if n.op_type == "Cast" and isinstance(to, int):
            note(to, n.name or n.output[0], n.output[0] in io)
    out = []
    for dtype, names in seen.items():
        sev, problem, fix = _DTYPES[dtype]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        out.append(TrtFinding(", ".join(names[:3]) + more, "dtype", problem, fix,
                              sev))  # type: ignore[arg-type]
    return out


def _inputs(model: onnx.ModelProto) -> list[TrtFinding]:
    """Dynamic graph inputs need an optimisation profile; an unknown rank is refused."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out.append(TrtFinding(vi.name, "input", "the input has no rank: TensorRT "
                                  "needs every network input's rank", "export with a "
                                  "fixed-rank input", "error"))
            continue
        dyn = [i for i, d in enumerate(tt.shape.dim) if not d.HasField("dim_value")]
        if dyn:
            names = [tt.shape.dim[i].dim_param or "?" for i in dyn]
            out.append(TrtFinding(vi.name, "input", f"dims {dyn} are dynamic ({names}): the "
                                  "engine needs an optimisation profile", "build with "
                                  "--minShapes/--optShapes/--maxShapes (trt/build.sh "
                                  "passes them), or export with static shapes", "warning"))
    return out


def _nodes(nodes: list[onnx.NodeProto], g: Graph, opset_domains: set[str]) -> list[TrtFinding]:
    out: list[TrtFinding] = []
    for node in nodes:
        if node.domain not in ("", "ai.onnx"):
            out.append(_f(node, f"custom-domain op {node.domain}::{node.op_type}: TensorRT's "
                          "ONNX parser has no importer for it (only a plugin could run it)",
                          "export without runtime-specific fusions (vtc's model.onnx, not "
                          "model.ort.onnx) or write a TensorRT plugin"))
        elif node.op_type in UNSUPPORTED:
            out.append(_f(node, f"{node.op_type} is not supported by TensorRT's ONNX parser",
                          "rewrite it with supported ops"))
        elif node.op_type in CHECKS:
            out += CHECKS[node.op_type](node, g)
        elif node.op_type not in PLAIN:
            out.append(_f(node, f"{node.op_type} is not in vtc's TensorRT table",
                          "confirm with `trtexec --onnx=model.onnx`", "warning"))
        for a in node.attribute:  # Loop/If/Scan bodies
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _nodes(list(sub.node), g, opset_domains)
    return out


def lint(model: onnx.ModelProto, base_dir: str | Path = "") -> list[TrtFinding]:
    """Every finding for `model` (errors first, then warnings, each in graph order).
    `base_dir`: where the model's external data lies."""
    g = _read(model, str(base_dir))
    domains = {o.domain for o in model.opset_import}
    found = _inputs(model) + _dtypes(model) + _nodes(list(model.graph.node), g, domains)
    return sorted(found, key=lambda f: f.severity != "error")


def lint_file(path: str | Path) -> TrtLintInfo:
    """`lint` of an .onnx file (its external data read only for small constants).
    Raises OSError / onnx's DecodeError on an unreadable file, ValueError on one that
    decodes to no graph (an empty file does); the CLI turns them into exit 2."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    if not model.graph.node and not model.graph.input:
        raise ValueError("no graph nodes or inputs: empty, truncated or another kind of file")
    return summary(lint(model, path.parent))


def summary(findings: list[TrtFinding]) -> TrtLintInfo:
    errors = sum(f.severity == "error" for f in findings)
    return TrtLintInfo(errors, len(findings) - errors, findings)


def format_finding(f: TrtFinding) -> str:
    """`error   node (Op): problem; fix: ...` — one line per finding."""
    return f"{f.severity:<7} {f.node} ({f.op}): {f.problem}; fix: {f.fix}"
