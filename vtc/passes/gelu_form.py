"""GELU in the form ONNX Runtime's session optimizer fuses.

PyTorch exports the exact (erf) GELU as ``x * (0.5 * (1 + erf(x / √2)))``. onnxruntime's
``GeluFusion`` (core/optimizer/gelu_fusion.cc) matches only ``(x * 0.5) * (1 + erf(…))``:
it looks for a Mul of (x, 0.5) feeding the last Mul. So none of the exported GELUs
became ``com.microsoft.Gelu`` (checked with onnxruntime 1.32: the torch form keeps
Div, Erf, Add, Mul, Mul; the other form becomes one Gelu, and after a MatMul + bias,
BiasGelu). This pass moves the 0.5::

    before:  x ─► Div(√2) ─► Erf ─► Add(1) ─► Mul(0.5, ·) ─► Mul(x, ·) ─► y
    after:   x ─► Div(√2) ─► Erf ─► Add(1) ───────────────┐
             x ─► Mul(x, 0.5) ───────────────────────────► Mul ─► y

Scaling by 0.5 is exact in binary floating point (away from subnormals), so y is the
same bit for bit: the rewrite changes no decision and no output. It runs on the copies
an engine that fuses builds from (`vtc.passes.fuse_attention.fuse_file`), both the
baseline and the compressed graph.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from vtc.passes.base import Pass

__all__ = ["GeluForm", "reorder_gelu"]


def _scalar(v: ir.Value | None) -> float | None:
    """The value of a one-element constant (initializer or Constant node), else None."""
    if v is None:
        return None
    tensor = v.const_value
    node = v.producer()
    if tensor is None and node is not None and node.op_type == "Constant":
        attr = node.attributes.get("value")
        tensor = attr.value if attr is not None else None
    if tensor is None:
        return None
    arr = np.asarray(tensor.numpy())
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The input of a two-input node that is not `v`."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is v else a if b is v else None


def _only_consumer(v: ir.Value, op: str) -> ir.Node | None:
    users = [u for u, _ in v.uses()]
    if len(users) != 1 or users[0].op_type != op or len(users[0].inputs) != 2:
        return None
    return users[0]


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6)


def reorder_gelu(model: ir.Model) -> int:
    """Rewrite every torch-form erf GELU in `model` in place (module docstring);
    returns how many."""
    graph = model.graph
    done = 0
    for erf in [n for n in graph if n.op_type == "Erf"]:
        div = erf.inputs[0].producer() if erf.inputs[0] is not None else None
        if div is None or div.op_type != "Div" or not _close(_scalar(div.inputs[1]),
                                                             math.sqrt(2.0)):
            continue
        x = div.inputs[0]
        add = _only_consumer(erf.outputs[0], "Add")
        if x is None or add is None or not _close(_scalar(_other(add, erf.outputs[0])), 1.0):
            continue
        half_mul = _only_consumer(add.outputs[0], "Mul")
        half = _other(half_mul, add.outputs[0]) if half_mul is not None else None
        if half_mul is None or not _close(_scalar(half), 0.5):
            continue
        last = _only_consumer(half_mul.outputs[0], "Mul")
        if last is None or _other(last, half_mul.outputs[0]) is not x:
            continue
        scaled = ir.node("Mul", [x, half], name=f"{half_mul.name or 'gelu'}/vtc_x_half")
        graph.insert_before(last, scaled)
        j = 0 if last.inputs[0] is half_mul.outputs[0] else 1
        last.replace_input_with(j, add.outputs[0])
        last.replace_input_with(1 - j, scaled.outputs[0])
        graph.remove(half_mul, safe=True)
        done += 1
    return done


class GeluForm(Pass):
    """`reorder_gelu` as a pass (done: the GELUs rewritten)."""

    name = "gelu_reordered"

    def apply(self, model: ir.Model) -> bool:
        self.done = reorder_gelu(model)
        return bool(self.done)
