"""int8 engines with fp32 decisions: a graph's weight MatMuls and Gemms quantized with
ONNX Runtime's quantization tooling — static QDQ calibrated on images, or dynamic —
except the nodes that decide which tokens merge or drop.

Before (fp32 throughout)::

    x f32 ─► MatMul(W f32) ─► … ─► [vtc_tome3/… metric MatMul, TopK, weighted merge]
      ─► … ─► logits f32

After, static (`backend.int8_activations: static`, the default)::

    x f32 ─► QuantizeLinear ─► DequantizeLinear ─► MatMul ◄─ DequantizeLinear ◄─ W int8
      ─► … ─► [vtc_* nodes, fp32, untouched] ─► … ─► logits f32

After, dynamic (`int8_activations: dynamic`: no calibration, the range measured per call)::

    x f32 ─► DynamicQuantizeLinear ─► MatMulInteger ◄─ W int8 ─► Cast ─► Mul(scales) ─► …

ONNX Runtime's optimizer then fuses each group into an integer kernel (uint8
activations × int8 weights, the x86 VNNI/AMX layout): static, QLinearMatMul with a
DequantizeLinear and the bias Add after it; dynamic, DynamicQuantizeMatMul /
MatMulIntegerToFloat with the rescale and the bias inside (ViT-B/16 on this CPU: 11–14 %
less kernel time than static, docs/int8.md). What is quantized and how:

* only MatMul and Gemm nodes whose second input is a constant weight
  (`MatMulConstBOnly`): the projections and MLP layers, where the time is. The
  attention products (Q·Kᵀ, P·V) and fused attention nodes stay fp32;
* every node a method, the size bias, the unmerge or the token-size bookkeeping
  emitted (names starting with `vtc_`: similarities, scores, TopK, index arithmetic,
  weighted averages) is excluded, as with fp16 (`vtc.passes.precision`);
* weights int8 per output channel, symmetric; activations uint8 per tensor,
  asymmetric, their ranges the min/max over the calibration batches (MinMax; static)
  or over each call's input (dynamic);
* the weight nodes of the layer roles `keep_fp32` names (`backend.int8_keep_fp32`;
  roles read from the graph's structure by `vtc.passes.matmul_roles`: attention_in,
  attention_out, mlp_in, mlp_out, other) stay fp32 too; by default, static, the
  attention projections (q, k, v, o), where static int8 loses most of its accuracy on
  real weights; dynamic, none (its per-call ranges lose less there).

What the decisions read (keys, attention probabilities) comes out of int8 layers, so
an int8 engine can decide differently from the fp32 one on a near-tie; the pipeline
judges it as the deployment tier (`Report.deployment`), never as parity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vtc.backends.options import Int8Activations, Int8Role
from vtc.passes.matmul_roles import ROLES, classify
from vtc.passes.model_io import graph_inputs
from vtc.passes.precision import KEEP_PREFIX

QUANTIZED_OPS = ("MatMul", "Gemm")
DYNAMIC_SUFFIX = "_quant"  # quantize_dynamic names a MatMul's MatMulInteger <name>_quant
# the roles kept fp32 when the recipe names none (`backend.int8_keep_fp32: null`), per
# activation mode. Static: the attention projections — dinov2-small Fashion-MNIST probe,
# vtc ToMe r=16 int8 vs uncompressed fp32 (docs/int8.md, 2026-12-08): 1.70 pt with none
# kept, 0.80 pt with these (bench.peers: 1.50 and 0.65 pt). Dynamic: none — the same
# probe drops 0.70 pt with every weight MatMul int8 (bench.peers, 2026-12-08)
DEFAULT_KEEP_FP32: dict[str, tuple[Int8Role, ...]] = {
    "static": ("attention_in", "attention_out"), "dynamic": ()}


def calibration_feeds(model: onnx.ModelProto, image: str, images: np.ndarray
                      ) -> list[dict[str, np.ndarray]]:
    """The calibration batches: `images` float32 [n, C, H, W] in chunks of the graph's
    static batch (the last padded by repeating its first image) or in one batch when
    the batch is symbolic; every other graph input zeros of that batch."""
    specs = graph_inputs(model)
    batch = specs[image][0][0] if specs[image][0] else None
    step = batch or len(images)
    feeds = []
    for i in range(0, len(images), step):
        x = images[i:i + step]
        if len(x) < step:
            x = np.concatenate([x, np.repeat(x[:1], step - len(x), axis=0)])
        feed = {image: np.ascontiguousarray(x, dtype=np.float32)}
        for name, (dims, dtype) in specs.items():
            if name != image:
                shape = [len(x) if j == 0 else (d or 1) for j, d in enumerate(dims)]
                feed[name] = np.zeros(shape, dtype=dtype)
        feeds.append(feed)
    return feeds


def _constants(model: onnx.ModelProto) -> set[str]:
    """Values computed from initializers and Constant nodes alone (nodes in order)."""
    const = {i.name for i in model.graph.initializer}
    for n in model.graph.node:
        ins = [i for i in n.input if i]
        if n.op_type == "Constant" or (ins and all(i in const for i in ins)):
            const.update(n.output)
    return const


def excluded(model: onnx.ModelProto) -> list[str]:
    """The MatMul/Gemm nodes that stay fp32: the ones vtc's passes emitted, and every
    product whose second input is not a constant (Q·Kᵀ, P·V: ONNX Runtime's quantizer
    would quantize those too, `MatMulConstBOnly` notwithstanding in QDQ format)."""
    const = _constants(model)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS
            and (n.name.startswith(KEEP_PREFIX) or n.input[1] not in const)]


def _named(src: Path, dst: Path) -> Path:
    """`src` itself when every node has a name (the quantizer excludes nodes by name), else
    a copy at `dst` with the unnamed ones named `int8_node_<index>`."""
    model = onnx.load(str(src), load_external_data=False)
    if all(n.name for n in model.graph.node):
        return src
    model = onnx.load(str(src))
    used = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"int8_node_{i}"
            while n.name in used:
                n.name += "_"
            used.add(n.name)
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 2**31 - 2**20)
    return dst


def to_int8(src: Path, dst: Path, image: str, images: np.ndarray | None,
            extra: Mapping[str, Any] | None = None,
            keep_fp32: Iterable[Int8Role] | None = None,
            activations: Int8Activations = "static") -> dict[str, int]:
    """Write `src` with its weight MatMuls/Gemms quantized to int8 to `dst`, except those
    of the roles in `keep_fp32` (None: `DEFAULT_KEEP_FP32[activations]`). `activations`
    static: QDQ,
    calibrated on `images` (float32 [n, C, H, W], fed as `image`); dynamic: each
    quantized MatMul measures its input's range on every call (`images` unused).
    Returns the counts for the report: MatMul/Gemm nodes quantized and those left fp32
    (vtc's decisions, products of two activations such as Q·Kᵀ, the kept roles), and
    per role (`<role> int8`, `<role> fp32`; `other` holds every weight node the
    classifier did not place)."""
    kept = set(DEFAULT_KEEP_FP32[activations] if keep_fp32 is None else keep_fp32)
    if kept - set(ROLES):
        raise ValueError(f"unknown layer role(s) {sorted(kept - set(ROLES))}; known: "
                         f"{', '.join(ROLES)}")
    if activations == "static" and (images is None or not len(images)):
        raise ValueError("static int8 needs calibration images")
    named = _named(src, dst.with_name(dst.stem + ".named.onnx"))
    model = onnx.load(str(named), load_external_data=False)
    roles = classify(model)
    keep = excluded(model) + [n for n, r in roles.items() if r in kept]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice, once per call
    try:
        if activations == "static":
            assert images is not None
            _static(named, dst, calibration_feeds(model, image, images), keep, extra)
        else:
            _dynamic(named, dst, keep, extra)
    finally:
        root.setLevel(level)
        if named != src:
            named.unlink(missing_ok=True)
            named.with_name(named.name + ".data").unlink(missing_ok=True)
    return _counts(onnx.load(str(dst), load_external_data=False), roles)


def _static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], keep: list[str],
            extra: Mapping[str, Any] | None) -> None:
    """QDQ, activations uint8 asymmetric per tensor (MinMax over `feeds`), weights int8
    symmetric per output channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(
        str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False,
                       "WeightSymmetric": True, **dict(extra or {})},
        use_external_data_format=False, calibration_providers=["CPUExecutionProvider"])


def _dynamic(src: Path, dst: Path, keep: list[str], extra: Mapping[str, Any] | None
             ) -> None:
    """DynamicQuantizeLinear → MatMulInteger (uint8 activations, their range measured per
    call; weights int8 symmetric per output channel), which ONNX Runtime fuses with the
    rescale and the bias into DynamicQuantizeMatMul / MatMulIntegerToFloat."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
        weight_type=QuantType.QInt8, nodes_to_exclude=keep,
        extra_options={"MatMulConstBOnly": True, **dict(extra or {})},
        use_external_data_format=False)


def int8_nodes(model: onnx.ModelProto) -> set[str]:
    """The weight MatMul/Gemm nodes of a quantized graph that run in int8, by their
    names before quantization: static, the MatMuls/Gemms whose weight (second input)
    comes out of a DequantizeLinear; dynamic, the MatMulIntegers (`<name>_quant`)."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    static = {n.name for n in model.graph.node
              if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in dq}
    return static | {n.name.removesuffix(DYNAMIC_SUFFIX) for n in model.graph.node
                     if n.op_type == "MatMulInteger"}


def _counts(out: onnx.ModelProto, roles: Mapping[str, Int8Role]) -> dict[str, int]:
    """MatMul/Gemm nodes int8 and fp32 in all, then per role of the weight nodes."""
    q = int8_nodes(out)
    fp32 = [n for n in out.graph.node if n.op_type in QUANTIZED_OPS and n.name not in q]
    counts = {"int8 MatMul/Gemm": len(q), "fp32 MatMul/Gemm": len(fp32)}
    for role in ROLES:
        names = [n for n, r in roles.items() if r == role]
        n_q = sum(1 for n in names if n in q)
        counts[f"{role} int8"] = n_q
        counts[f"{role} fp32"] = len(names) - n_q
    return counts
