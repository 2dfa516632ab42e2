"""Shape fix-up: rewrite constants that baked the old token count.

Exporters with static shapes write the token count into constants: Reshape
targets (`[8, 197, -1, 64]`), Expand shapes, Slice ends, and attention-mask
initializers (`[8, 1, 197, 197]`). After a merge or prune every value
downstream has fewer tokens, so those constants must follow:

    before:  x[B, 197, C] ─► Reshape(shape=[B, 197, -1, 64])
    after:   x[B,  99, C] ─► Reshape(shape=[B,  99, -1, 64])

    before:  logits[B, H, 197, 197] ─► Add(mask[B, 1, 197, 197])   (mask constant along N)
    after:   logits[B, H,  99,  99] ─► Add(mask[B, 1,   1,   1])

The pass walks the graph in order, infers each node's new output shapes with
ONNX's per-node inference, and fixes a node's constant inputs where its data
input changed shape. Which entry of a Reshape target holds the token count is
decided from element spans (the product of the dims before it), never from
the value alone, so a head dimension equal to N is left alone. A reshape that
splits the token axis (e.g. back to a 2-D grid) cannot be fixed here and is
reported by name — except where the split axis folded the tokens with the batch
(`[N·B, C] → [N, B, C]`, the sequence-first layout of nn.MultiheadAttention):
that is a token reshape, and the token dim of the output is rewritten.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from vtc.passes.graph import GraphError, initializer, is_const, static_dims

# Binary/ternary ops that broadcast their inputs.
ELEMENTWISE = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Where", "Equal", "Max", "Min", "And", "Or"}
)
_INT64_MAX = np.iinfo(np.int64).max


def record_shapes(model: ir.Model) -> dict[int, list[int]]:
    """Static shapes of every value before rewriting, keyed by id(value)."""
    shapes: dict[int, list[int]] = {}
    for v in _all_values(model.graph):
        dims = static_dims(v)
        if dims is not None:
            shapes[id(v)] = dims
    return shapes


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    vals: list[ir.Value] = list(graph.inputs)
    for node in graph:
        vals.extend(node.outputs)
    return vals


def _unfold(a: int, b: int, s0: int, oo: list[int], batch: int | None) -> int | None:
    """The output axis holding the tokens when a Reshape splits a leading input axis
    that folded the tokens with the batch, `[N·B, C] → [N, B, C]` (nn.MultiheadAttention's
    sequence-first layout) or `[B·N, C] → [B, N, C]`: the output pair that spans it
    holds the batch, and the tokens are the other one (the first when both equal B).
    None for any other split (a grid: `[B, N, C] → [B, h, w, C]`)."""
    if batch is None or s0 != 1 or len(oo) < 2 or oo[0] * oo[1] != a or batch not in oo[:2]:
        return None
    m = 0 if oo[0] != batch or oo[1] == batch else 1
    return m if oo[m] * b % a == 0 else None


def _reshape_target(io: list[int], in_: list[int], oo: list[int], t: list[int], name: str,
                    batch: int | None = None) -> list[int]:
    new = list(t)
    for i, (a, b) in enumerate(zip(io, in_, strict=True)):
        if a == b:
            continue
        s0 = math.prod(io[:i])
        s1 = s0 * a
        hit = None
        for j in range(len(oo)):
            if math.prod(oo[:j]) <= s0 and math.prod(oo[: j + 1]) >= s1 and oo[j] % a == 0:
                hit = j
        folded = _unfold(a, b, s0, oo, batch) if hit is None else None
        if folded is not None:
            if new[folded] not in (-1, 0):
                new[folded] = oo[folded] * b // a
            continue
        if hit is None:
            raise GraphError(
                f"Reshape {name!r} splits the token axis ({io} → {oo}); vtc cannot give it a "
                "new static token count (a dense consumer needs the full grid: not supported yet)"
            )
        if new[hit] not in (-1, 0):
            new[hit] = oo[hit] // a * b
    return new


class _Fixer:
    def __init__(self, model: ir.Model, old: dict[int, list[int]]) -> None:
        self.model = model
        self.graph = model.graph
        self.old = old
        self.opset = model.opset_imports.get("", 18)
        self.fixed = 0
        shape = model.graph.inputs[0].shape if model.graph.inputs else None
        first = shape[0] if shape is not None and len(shape) else None
        self.batch = first if isinstance(first, int) else None

    def const(self, arr: np.ndarray, hint: str) -> ir.Value:
        self.fixed += 1
        return initializer(self.graph, arr, f"vtc_fix/{hint}_{self.fixed}")

    def changed(self, v: ir.Value | None) -> tuple[list[int], list[int]] | None:
        """(old dims, new dims) when v's static shape changed."""
        if v is None or id(v) not in self.old:
            return None
        new = static_dims(v)
        old = self.old[id(v)]
        if new is None or new == old:
            return None
        return old, new

    def fix_node(self, node: ir.Node) -> None:
        op = node.op_type
        if (node.name or "").startswith("vtc_"):
            return  # written by vtc for the new token counts already
        if op == "Reshape" and is_const(node.inputs[1]):
            ch = self.changed(node.inputs[0])
            if ch is not None:
                t = node.inputs[1].const_value.numpy().tolist()  # type: ignore[union-attr]
                oo = self.old.get(id(node.outputs[0]))
                if oo is None:
                    raise GraphError(f"Reshape {node.name!r}: output shape unknown before rewrite")
                new = _reshape_target(ch[0], ch[1], oo, t, node.name or "", self.batch)
                if new != t:
                    node.replace_input_with(1, self.const(np.array(new, np.int64), "shape"))
        elif op == "Expand" and is_const(node.inputs[1]):
            ch = self.changed(node.inputs[0])
            if ch is not None:
                t = node.inputs[1].const_value.numpy().tolist()  # type: ignore[union-attr]
                off = len(t) - len(ch[0])
                new = list(t)
                for i, (a, b) in enumerate(zip(*ch, strict=True)):
                    if a != b and 0 <= i + off < len(t) and t[i + off] == a:
                        new[i + off] = 1
                if new != t:
                    node.replace_input_with(1, self.const(np.array(new, np.int64), "expand"))
        elif op == "Slice":
            self._fix_slice(node)
        elif op in ELEMENTWISE:
            self._fix_broadcast(node)

    def _fix_slice(self, node: ir.Node) -> None:
        ch = self.changed(node.inputs[0])
        if ch is None or len(node.inputs) < 3 or not all(is_const(v) for v in node.inputs[1:4]):
            return
        rank = len(ch[0])
        ends = node.inputs[2].const_value.numpy().astype(np.int64)  # type: ignore[union-attr]
        axes_v = node.inputs[3] if len(node.inputs) > 3 else None
        axes = (axes_v.const_value.numpy().tolist() if axes_v is not None  # type: ignore[union-attr]
                else list(range(len(ends))))
        new = ends.copy()
        for k, ax in enumerate(axes):
            ax = ax % rank
            a, b = ch[0][ax], ch[1][ax]
            if a != b and ends[k] >= a:
                new[k] = _INT64_MAX
            elif a != b and b < ends[k] < a:
                raise GraphError(f"Slice {node.name!r} ends at token {ends[k]} beyond the new "
                                 f"count {b}")
        if not np.array_equal(new, ends):
            node.replace_input_with(2, self.const(new, "ends"))

    def _fix_broadcast(self, node: ir.Node) -> None:
        dyn = [v for v in node.inputs if v is not None and not is_const(v)]
        changes = [self.changed(v) for v in dyn]
        if not any(changes):
            return
        for idx, v in enumerate(node.inputs):
            if not is_const(v):
                continue
            arr = v.const_value.numpy()  # type: ignore[union-attr]
            out = arr
            for ch in changes:
                if ch is None:
                    continue
                old, new = ch
                off = len(old) - arr.ndim
                for ax in range(arr.ndim):
                    oa = ax + off
                    if oa < 0 or old[oa] == new[oa] or out.shape[ax] != old[oa] or old[oa] == 1:
                        continue
                    first = np.take(out, [0], axis=ax)
                    if not np.all(out == first):
                        raise GraphError(
                            f"{node.op_type} {node.name!r} uses a constant that varies along the "
                            "token axis; vtc cannot resize it for the new token count"
                        )
                    out = first
            if out is not arr:
                node.replace_input_with(idx, self.const(np.ascontiguousarray(out), "bcast"))

    def infer(self, node: ir.Node) -> None:
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
        except onnx.defs.SchemaError:
            return
        types: dict[str, onnx.TypeProto] = {}
        data: dict[str, onnx.TensorProto] = {}
        for v in node.inputs:
            if v is None or v.type is None or v.shape is None or v.dtype is None:
                continue
            dims: list[Any] = [d if isinstance(d, int) else str(d) for d in v.shape]
            types[v.name or ""] = onnx.helper.make_tensor_type_proto(v.dtype.value, dims)
            if v.const_value is not None and v.const_value.size <= 64:
                data[v.name or ""] = ir.serde.serialize_tensor(v.const_value)
        proto = ir.serde.serialize_node(node)
        opsets = [onnx.helper.make_opsetid(d, ver) for d, ver in self.model.opset_imports.items()]
        try:
            outs = onnx.shape_inference.infer_node_outputs(schema, proto, types, data, None, opsets)
        except Exception as exc:
            raise GraphError(f"shape inference failed at {node.op_type} {node.name!r}: {exc}"
                             ) from exc
        for out in node.outputs:
            tp = outs.get(out.name or "")
            if tp is None or not tp.tensor_type.HasField("shape"):
                continue
            out.shape = ir.Shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in tp.tensor_type.shape.dim])
            if out.type is None:
                out.type = ir.TensorType(ir.DataType(tp.tensor_type.elem_type))


def fix_shapes(model: ir.Model, old: dict[int, list[int]]) -> int:
    """Propagate new static shapes through the rewritten graph and fix the
    constants that baked old token counts; returns how many were rewritten."""
    model.graph.sort()
    fixer = _Fixer(model, old)
    for node in model.graph:
        fixer.fix_node(node)
        fixer.infer(node)
    return fixer.fixed
