"""Weight-only int4 quantization of a decoder's MatMuls, one weight at a time.

onnxruntime-genai's model builder quantizes by turning its whole graph into one protobuf
(every fp32 weight in memory at once, beside the torch model it was built from): a
7B-parameter LM needs more than 24 GiB that way. This pass gives the same result from
the builder's fp32 decoder while holding one weight in fp32 at a time:

    x ─► MatMul(x, W[K, N] fp32 initializer) ─► y
      ⇒
    x ─► MatMulNBits(x, W_Q4[N, K/32, 16] uint8, W_scales[N, K/32] fp32;
                     K, N, bits=4, block_size=32, accuracy_level=4) ─► y

Symmetric blocks of 32 along K, quantized by onnxruntime's own kernel
(`quantize_matmul_4bits`, what the builder's `MatMulNBitsQuantizer` calls), with the
builder's node and tensor names (``<node>_Q4``, ``<weight>_Q4``, ``<weight>_scales``):
the result equals the builder's ``-p int4 -e cpu`` decoder initializer for initializer
(tests/vlm/test_decoder.py). MatMuls whose second input is not a 2-D fp32 initializer are
left as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

BITS = 4
BLOCK = 32
ACCURACY_LEVEL = 4  # int8 compute on the CPU, as the builder sets for -e cpu


def quantize_weight(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """W[K, N] fp32 → (packed[N, ceil(K/block), block/2] uint8, scales[N, ceil(K/block)])."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = w.shape
    k_blocks = (rows + block - 1) // block
    pad = k_blocks * block - rows
    w = np.ascontiguousarray(np.pad(w, ((0, pad), (0, 0))) if pad else w, dtype=np.float32)
    packed = np.zeros((cols, k_blocks, block // 2), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=np.float32)
    zero = np.zeros((cols, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, w, scales, zero, block, cols, rows, True)
    return packed, scales


def apply(model: ir.Model, block: int = BLOCK) -> int:
    """Replace every MatMul with a 2-D fp32 initializer weight (module docstring) in place;
    returns how many were replaced. Each weight is read, quantized and dropped in turn."""
    graph = model.graph
    done = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        x, w = node.inputs
        if (x is None or w is None or w.const_value is None or w.dtype != ir.DataType.FLOAT
                or w.shape is None or len(w.shape) != 2):
            continue
        weight = w.const_value.numpy()
        k, n = weight.shape
        packed, scales = quantize_weight(weight, block)
        del weight
        base = w.name or f"{node.name}.weight"
        q = ir.Value(name=f"{base}_Q4", shape=ir.Shape(packed.shape), type=ir.TensorType(
            ir.DataType.UINT8), const_value=ir.Tensor(packed, name=f"{base}_Q4"))
        s = ir.Value(name=f"{base}_scales", shape=ir.Shape(scales.shape), type=ir.TensorType(
            ir.DataType.FLOAT), const_value=ir.Tensor(scales, name=f"{base}_scales"))
        for v in (q, s):
            graph.register_initializer(v)
        new = ir.node("MatMulNBits", [x, q, s], domain="com.microsoft",
                      attributes={"K": k, "N": n, "bits": BITS, "block_size": block,
                                  "accuracy_level": ACCURACY_LEVEL},
                      name=f"{node.name}_Q4", num_outputs=1)
        out = node.outputs[0]
        graph.insert_before(node, new)
        ir.convenience.replace_all_uses_with(out, new.outputs[0], replace_graph_outputs=True)
        graph.remove(node, safe=True)
        new.outputs[0].name, new.outputs[0].shape, new.outputs[0].type = (
            out.name, out.shape, out.type)
        if not w.uses() and w.name is not None and w.name in graph.initializers:
            graph.initializers.pop(w.name)
        done += 1
    if done:
        model.opset_imports.setdefault("com.microsoft", 1)
    return done


def quantize_file(src: Path, dst: Path) -> int:
    """`src` (an fp32 decoder, weights external or inline) → `dst` with int4 MatMuls
    (weights in ``<dst>.data``); returns how many MatMuls were quantized."""
    model = ir.load(str(src))
    done = apply(model)
    ir.save(model, str(dst), external_data=f"{dst.name}.data")
    return done
