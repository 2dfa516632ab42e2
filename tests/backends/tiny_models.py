"""Tiny ONNX graphs for backend tests, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as h

C = 8


def _f(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def linear_ln_gelu(
    path: Path, gelu_half: float = 0.5, batch: int | str = 2, tokens: int = 4
) -> Path:
    """x[B, T, C] -> MatMul+Add -> decomposed LayerNorm -> erf-GELU -> y[B, T, C].

    ORT fuses these into Gemm, LayerNormalization and com.microsoft Gelu. With
    ``gelu_half != 0.5`` the GELU pattern no longer matches (it is not a GELU).
    A string ``batch`` makes the batch dimension dynamic (a dim_param).
    """
    rng = np.random.default_rng(0)
    nodes = [
        h.make_node("MatMul", ["x", "W"], ["mm"]),
        h.make_node("Add", ["mm", "b"], ["lin"]),
        h.make_node("ReduceMean", ["lin", "axes"], ["mu"], keepdims=1),
        h.make_node("Sub", ["lin", "mu"], ["d"]),
        h.make_node("Pow", ["d", "two"], ["d2"]),
        h.make_node("ReduceMean", ["d2", "axes"], ["var"], keepdims=1),
        h.make_node("Add", ["var", "eps"], ["ve"]),
        h.make_node("Sqrt", ["ve"], ["sd"]),
        h.make_node("Div", ["d", "sd"], ["nrm"]),
        h.make_node("Mul", ["nrm", "gamma"], ["sc"]),
        h.make_node("Add", ["sc", "beta"], ["ln"]),
        h.make_node("Div", ["ln", "sqrt2"], ["g0"]),
        h.make_node("Erf", ["g0"], ["g1"]),
        h.make_node("Add", ["g1", "one"], ["g2"]),
        h.make_node("Mul", ["ln", "g2"], ["g3"]),
        h.make_node("Mul", ["g3", "half"], ["y"]),
    ]
    inits = [
        _f("W", rng.standard_normal((C, C))),
        _f("b", rng.standard_normal(C)),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes"),
        _f("two", 2.0),
        _f("eps", 1e-5),
        _f("gamma", np.ones(C)),
        _f("beta", np.zeros(C)),
        _f("sqrt2", np.sqrt(2.0)),
        _f("one", 1.0),
        _f("half", gelu_half),
    ]
    graph = h.make_graph(
        nodes,
        "linear_ln_gelu",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, C])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, [batch, tokens, C])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference_linear_ln_gelu(x: np.ndarray, gelu_half: float = 0.5) -> np.ndarray:
    """NumPy reference of :func:`linear_ln_gelu` for x ``[B, T, C]``."""
    from math import erf

    rng = np.random.default_rng(0)
    w = rng.standard_normal((C, C)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    lin = x.astype(np.float64) @ w + b
    mu = lin.mean(-1, keepdims=True)
    var = ((lin - mu) ** 2).mean(-1, keepdims=True)
    ln = (lin - mu) / np.sqrt(var + 1e-5)
    erf_v = np.vectorize(erf)(ln / np.sqrt(2.0))
    return (ln * (erf_v + 1.0) * gelu_half).astype(np.float32)
