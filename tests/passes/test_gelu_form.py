"""The GELU reorder: ONNX Runtime fuses the rewritten GELU, the outputs stay bit for bit
the same, and a vtc-rewritten ViT's ORT engine gets one Gelu-family op per MLP."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from vtc.passes.gelu_form import reorder_gelu


def _torch_form_gelu(path: Path, half_first: bool) -> Path:
    """x[2, 4, 8] → MatMul + bias → x·(0.5·(1 + erf(x/√2))) as torch exports it."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    consts = [h.make_node("Constant", [], [n], value=nh.from_array(np.array(v, np.float32)))
              for n, v in (("s2", 1.4142135381698608), ("one", 1.0), ("half", 0.5))]
    nodes = [*consts, h.make_node("MatMul", ["x", "W"], ["mm"]),
             h.make_node("Add", ["mm", "b"], ["z"]), h.make_node("Div", ["z", "s2"], ["d"]),
             h.make_node("Erf", ["d"], ["e"]), h.make_node("Add", ["e", "one"], ["a"]),
             h.make_node("Mul", ["half", "a"] if half_first else ["a", "half"], ["m"]),
             h.make_node("Mul", ["z", "m"], ["y"])]
    g = h.make_graph(nodes, "gelu", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8])], inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 18)]), path)
    return path


def _ort(path: Path, x: np.ndarray, optimized: Path) -> tuple[np.ndarray, dict[str, int]]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return sess.run(None, {"x": x})[0], dict(ops)


def test_ort_fuses_the_reordered_gelu_and_the_output_is_identical(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)
    for half_first in (True, False):
        src = _torch_form_gelu(tmp_path / f"src{half_first}.onnx", half_first)
        before, ops_before = _ort(src, x, tmp_path / "o1.onnx")
        assert "Erf" in ops_before and not {"Gelu", "BiasGelu"} & set(ops_before)
        model = ir.load(str(src))
        assert reorder_gelu(model) == 1
        dst = tmp_path / "dst.onnx"
        ir.save(model, str(dst))
        after, ops_after = _ort(dst, x, tmp_path / "o2.onnx")
        assert {"Gelu", "BiasGelu"} & set(ops_after) and "Erf" not in ops_after, ops_after
        np.testing.assert_array_equal(
            onnx.reference.ReferenceEvaluator(str(dst)).run(None, {"x": x})[0],
            onnx.reference.ReferenceEvaluator(str(src)).run(None, {"x": x})[0])
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)


def test_a_gelu_whose_last_mul_reads_another_tensor_is_left_alone(tmp_path: Path) -> None:
    src = _torch_form_gelu(tmp_path / "src.onnx", True)
    proto = onnx.load(str(src))
    last = proto.graph.node[-1]
    last.input[0] = "mm"  # mm · (0.5·(1 + erf(z/√2))): not a GELU of z
    onnx.save(proto, src)
    assert reorder_gelu(ir.load(str(src))) == 0
