"""A small node builder for the passes: every op it emits is from the
portable list in ARCHITECTURE.md (or from the few extra ops a method declares
and justifies, `Method.extra_ops`), and every constant becomes a named
initializer (so that TensorRT sees constants, not Constant nodes)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from vtc.passes.graph import initializer

# ARCHITECTURE.md's list, plus GatherND (whole-row gathers, `Emitter.rows`) and
# LpNormalization (the merge metric's L2 normalisation in one node): both in TensorRT's
# ONNX-parser table without restriction (`vtc.backends.trt_lint.PLAIN`), run by ONNX
# Runtime and OpenVINO (tests/backends/test_openvino.py), no data-dependent shape.
PORTABLE_OPS = frozenset(
    {
        "MatMul", "Softmax", "ReduceMax", "ReduceSum", "ReduceMean", "ReduceL2", "ArgMax",
        "TopK", "Gather", "GatherElements", "GatherND", "Concat", "Slice", "Where", "Equal",
        "Cast", "Mul", "Div", "Add", "Sub", "Log", "Range", "Transpose", "Unsqueeze",
        "Squeeze", "Expand", "Reshape", "Shape", "LpNormalization",
    }
)


class Emitter:
    """Builds nodes for one rewrite site, then splices them into the graph."""

    def __init__(self, graph: ir.Graph, prefix: str,
                 extra_ops: frozenset[str] = frozenset()) -> None:
        self.graph = graph
        self.prefix = prefix
        self.allowed = PORTABLE_OPS | extra_ops
        self.nodes: list[ir.Node] = []
        self._n = 0
        self.opset = graph.opset_imports.get("", 18)

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, value: Any, dtype: Any = np.int64, hint: str = "c") -> ir.Value:
        return initializer(self.graph, np.asarray(value, dtype=dtype), self._name(hint))

    def op(self, op_type: str, *inputs: ir.Value | None, outputs: int = 1, **attrs: Any) -> Any:
        """Emit one node; returns its output value (or a tuple when outputs > 1)."""
        if op_type not in self.allowed:
            raise AssertionError(f"{op_type} is not on the portable op list")
        node = ir.node(op_type, list(inputs), attrs or None, num_outputs=outputs,
                       name=self._name(op_type))
        for i, out in enumerate(node.outputs):
            out.name = f"{node.name}:{i}"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    # Short forms used by several passes --------------------------------------------------

    def reduce(self, op_type: str, x: ir.Value, axes: list[int], keepdims: int) -> ir.Value:
        """Reduce* with axes as an input (opset >= 18; ReduceSum >= 13) or an attribute."""
        as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, x, self.const(axes), keepdims=keepdims)
        return self.op(op_type, x, axes=axes, keepdims=keepdims)

    def slice(self, x: ir.Value, start: int, end: int, axis: int, step: int = 1) -> ir.Value:
        return self.op(
            "Slice", x, self.const([start]), self.const([end]), self.const([axis]),
            self.const([step]),
        )

    def sort_ascending(self, idx: ir.Value, k: int | ir.Value, axis: int = -1) -> ir.Value:
        """Sort int64 indices `[B, k]` ascending along `axis` (TopK on a float copy: exact
        below 2**24); `k` a count, or a graph value ``[1]`` int64 when it is known only at
        run time."""
        f = self.op("Cast", idx, to=ir.DataType.FLOAT)
        kv = k if isinstance(k, ir.Value) else self.const([k])
        vals, _ = self.op("TopK", f, kv, outputs=2, axis=axis, largest=0, sorted=1)
        return self.op("Cast", vals, to=ir.DataType.INT64)

    def gather_rows(self, x: ir.Value, idx: ir.Value, width: int) -> ir.Value:
        """x `[B, N, C]`, idx `[B, K]` → `[B, K, C]` (GatherElements on axis 1)."""
        e = self.op("Unsqueeze", idx, self.const([2]))
        if width != 1:
            e = self.op("Expand", e, self.const([1, 1, width]))
        return self.op("GatherElements", x, e, axis=1)

    def rows(self, x: ir.Value, idx: ir.Value) -> ir.Value:
        """x `[B, N, C]`, idx `[B, K, 1]` (int64) → `[B, K, C]`: whole rows, `GatherND`
        with `batch_dims=1` (a row copy each; `GatherElements` needs its index expanded to
        `[B, K, C]` and reads it element by element: 20-40× slower on the ORT CPU EP)."""
        return self.op("GatherND", x, idx, batch_dims=1)

    def take_rows(self, x: ir.Value, idx: ir.Value) -> ir.Value:
        """x `[B, N, C]`, idx `[B, K]` → `[B, K, C]` (`rows`)."""
        return self.rows(x, self.op("Unsqueeze", idx, self.const([2])))

    def one_hot(self, idx: ir.Value, depth: int) -> ir.Value:
        """idx `[B, K]` → float one-hot `[B, K, depth]` (Equal against a constant range)."""
        e = self.op("Unsqueeze", idx, self.const([2]))
        rng = self.const(np.arange(depth).reshape(1, 1, depth))
        return self.op("Cast", self.op("Equal", e, rng), to=ir.DataType.FLOAT)

    def insert_after(self, anchor: ir.Node) -> None:
        self.graph.insert_after(anchor, self.nodes)
        self.nodes = []

    def insert_before(self, anchor: ir.Node) -> None:
        self.graph.insert_before(anchor, self.nodes)
        self.nodes = []


def rewire(old: ir.Value, new: ir.Value, skip: list[ir.Node]) -> None:
    """Every use of `old` except by the nodes in `skip` now reads `new`."""
    skip_ids = {id(n) for n in skip}
    for user, idx in list(old.uses()):
        if id(user) not in skip_ids:
            user.replace_input_with(idx, new)
    if old.is_graph_output():
        raise AssertionError("a residual stream that is a graph output cannot be rewired")
