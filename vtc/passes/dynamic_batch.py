"""Dynamic batch: give a compressed static-batch graph a symbolic batch again.

The rewrite passes need every shape static, so a dynamic-batch source is
pinned and rewritten **twice**, at two probe batches (2 and 3). The two
results are the same graph except where a constant baked the batch; comparing
them finds exactly those constants, wherever the batch sits (axis 0 of the
stream, folded with the heads, or axis 1 inside a sequence-first attention
head), and this pass rewrites them in the first graph:

    Reshape(x[B, N, C], [2, N, -1, 64])  vs [3, N, -1, 64]   →  Reshape(x, [0, N, -1, 64])
    Reshape(kᵀ[B·H, D, N], [2, H, D, N]) vs [3, H, D, N]     →  Reshape(kᵀ, [-1, H, D, N])
    Expand(cls[1, 1, C], [2, 1, C])      vs [3, 1, C]        →  Expand(cls, Concat(B, [1, C]))
    Concat(cls_b[2, 1, C], patches)      vs cls_b[3, 1, C]   →  Concat(Expand(cls_b[:1], …), …)
    Add(logits, mask[2, 1, N, N])        vs mask[3, 1, N, N] →  Add(logits, mask[:1])

(B = Slice(Shape(input), 0, 1), computed once at the top of the graph.) The batch
axis of the inputs and outputs gets the source's name for it (`batch_size` in an
optimum-cli export, `batch` by default), and the constants the rewrite replaced are
removed (ONNX Runtime warns about every unused initializer when it loads a graph).

A constant that differs in any other way, or graphs that differ in
structure, are reported by node name: the batch cannot be made dynamic.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import GraphError, is_const
from vtc.passes.model_io import infer_shapes
from vtc.passes.shape_fixup import ELEMENTWISE

BATCH = "batch"
PROBES = (2, 3)


def _fail(node: ir.Node, why: str) -> GraphError:
    return GraphError(f"{node.op_type} {node.name!r}: {why}; vtc cannot make its batch dynamic")


def _arr(v: ir.Value) -> np.ndarray:
    return v.const_value.numpy()  # type: ignore[union-attr]


class _Relaxer:
    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.em = Emitter(graph, "vtc_batch")
        self.batch_dim = self.em.slice(self.em.op("Shape", graph.inputs[0]), 0, 1, axis=0)
        self.em.insert_before(next(iter(graph)))
        self.fixed = 0

    def dynamic_shape(self, node: ir.Node, t: list[int], pos: list[int], b: int) -> ir.Value:
        """A shape tensor equal to t with the batch at positions `pos` (entries == b)."""
        parts = []
        for i, d in enumerate(t):
            if i in pos:
                if d != b:
                    raise _fail(node, f"shape entry {d} is a multiple of the batch")
                parts.append(self.batch_dim)
            else:
                parts.append(self.em.const([d], hint="dim"))
        shape = self.em.op("Concat", *parts, axis=0)
        self.em.insert_before(node)
        return shape

    def reshape(self, node: ir.Node, t: list[int], pos: list[int]) -> None:
        new = list(t)
        if len(pos) != 1:
            raise _fail(node, f"the batch appears {len(pos)} times in its target {t}")
        j = pos[0]
        if -1 not in t:
            new[j] = -1
        elif j == 0 and 0 not in t[1:] and node.inputs[0] is not None:
            new[0] = 0  # copy axis 0 of the input, which carries the batch
            node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)
        else:
            raise _fail(node, f"its target {t} has no free entry for the batch")
        node.replace_input_with(1, self.em.const(np.array(new, np.int64), hint="shape"))

    def batched_const(self, node: ir.Node, idx: int, a: np.ndarray, c: np.ndarray,
                      b: int) -> None:
        """A constant the exporter folded over the batch (a CLS token expanded to
        [B, 1, C], a mask, a pooling probe projected to [B·H, 1, D]): one item
        of it, expanded to the run-time batch."""
        axes = [i for i, (x, y) in enumerate(zip(a.shape, c.shape, strict=True)) if x != y]
        if len(axes) != 1 or a.shape[axes[0]] % b:
            raise _fail(node, f"a constant input {a.shape} changes shape with the batch")
        ax = axes[0]
        k = a.shape[ax] // b  # items folded with the batch (e.g. heads), 1 if none
        if k == 1:
            first = np.take(a, [0], axis=ax)
            if not np.all(a == first):
                raise _fail(node, "a constant input differs per batch item")
            one = self.em.const(np.ascontiguousarray(first), dtype=a.dtype, hint="batch1")
            if node.op_type not in ELEMENTWISE:  # broadcasting will not restore the batch
                one = self.em.op("Expand", one,
                                 self.dynamic_shape(node, list(a.shape), [ax], b))
                self.em.insert_before(node)
            node.replace_input_with(idx, one)
            return
        per_item = a.reshape(b, k, *a.shape[1:]) if ax == 0 else None
        if per_item is None or not np.all(per_item == per_item[:1]):
            raise _fail(node, "a constant input differs per batch item")
        item = self.em.const(np.ascontiguousarray(per_item[:1]), dtype=a.dtype, hint="item")
        t = [b, k, *a.shape[1:]]
        one = self.em.op("Expand", item, self.dynamic_shape(node, t, [0], b))
        one = self.em.op("Reshape", one, self.em.const([-1, *a.shape[1:]], hint="shape"))
        self.em.insert_before(node)
        node.replace_input_with(idx, one)

    def node(self, na: ir.Node, nb: ir.Node, b: int) -> None:
        for idx, (va, vb) in enumerate(zip(na.inputs, nb.inputs, strict=True)):
            if va is None or vb is None or not is_const(va) or not is_const(vb):
                continue
            a, c = _arr(va), _arr(vb)
            if a.shape == c.shape and np.array_equal(a, c):
                continue
            self.fixed += 1
            if a.shape != c.shape:
                self.batched_const(na, idx, a, c, b)
                continue
            pos = [i for i, (x, y) in enumerate(zip(a.ravel(), c.ravel(), strict=True))
                   if x != y]
            if na.op_type == "Reshape" and idx == 1:
                self.reshape(na, a.tolist(), pos)
            elif a.ndim == 1 and a.dtype.kind == "i":
                # a shape tensor (Expand / Tile / a shape computation): build it at run time
                na.replace_input_with(idx, self.dynamic_shape(na, a.tolist(), pos, b))
            else:
                raise _fail(na, f"input {idx} holds the batch size")


def make_batch_dynamic(model: ir.Model, twin: ir.Model, batch: int = PROBES[0],
                       name: str = BATCH) -> int:
    """Rewrite `model` (pinned to `batch`) in place so that its batch is symbolic (the
    axis named `name`), using `twin` (the same source rewritten the same way at another
    batch) to find what baked the batch. Returns how many constants were rewritten."""
    ga, gb = model.graph, twin.graph
    ga.sort()
    gb.sort()
    nodes_a, nodes_b = list(ga), list(gb)
    if [n.op_type for n in nodes_a] != [n.op_type for n in nodes_b]:
        raise GraphError("the graph's structure depends on the batch size (two probe batches "
                         "gave different graphs); vtc cannot make its batch dynamic")
    relax = _Relaxer(ga)
    for na, nb in zip(nodes_a, nodes_b, strict=True):
        relax.node(na, nb, batch)
    for v in [*ga.inputs, *ga.outputs]:
        if v.shape is not None and len(v.shape) and v.shape[0] == batch:
            v.shape = ir.Shape([ir.SymbolicDim(name), *list(v.shape)[1:]])
    pinned = {}  # value → its shapes at both probe batches
    for na, nb in zip(nodes_a, nodes_b, strict=True):
        for oa, ob in zip(na.outputs, nb.outputs, strict=True):
            pinned[id(oa)] = (oa.shape, ob.shape)
            if not oa.is_graph_output():
                oa.shape = None
    # Record the new (batch-symbolic) shapes in the file: ORT's fusions read them.
    _flatten_linears(ga, pinned, batch)
    RemoveUnusedNodesPass()(model)  # the constants replaced above
    infer_shapes(model)
    _restore_past_unknown_ops(ga, pinned, batch, name)
    return relax.fixed


def _flatten_linears(graph: ir.Graph, pinned: dict[int, tuple[ir.Shape | None,
                                                               ir.Shape | None]],
                     batch: int) -> int:
    """`MatMul(x[B, N, C], W[C, D]) + b[D]` → `Reshape(MatMul(Reshape(x, [-1, C]), W) + b,
    [-1, N, D])`. ONNX Runtime turns a MatMul + Add into one Gemm only on 2-D operands,
    or on 3-D ones of static shape (it reshapes them itself then); with a symbolic batch
    every linear layer would stay a MatMul and a separate Add. Returns how many were
    flattened."""
    em, done = Emitter(graph, "vtc_batch_linear"), 0
    for node in list(graph):
        x, w = (*node.inputs, None, None)[:2] if node.op_type == "MatMul" else (None, None)
        if x is None or w is None or not is_const(w) or id(x) not in pinned:
            continue
        sa, sb = pinned[id(x)]
        users = list(node.outputs[0].uses())
        if sa is None or sb is None or len(sa) != 3 or not sa.is_static() \
                or not sb.is_static() or sa[0] != batch or list(sa)[1:] != list(sb)[1:]:
            continue
        wshape = w.shape
        if wshape is None or len(wshape) != 2 or not isinstance(wshape[1], int) \
                or len(users) != 1 \
                or users[0][0].op_type != "Add" or users[0][0].outputs[0].is_graph_output():
            continue
        add = users[0][0]
        bias = add.inputs[1 - users[0][1]]
        if bias is None or not is_const(bias) or bias.shape is None or len(bias.shape) != 1:
            continue
        n, c, d = cast(int, sa[1]), cast(int, sa[2]), wshape[1]  # static (checked above)
        flat = em.op("Reshape", x, em.const([-1, c], hint="shape"))
        em.insert_before(node)
        node.replace_input_with(0, flat)
        out = em.op("Reshape", add.outputs[0], em.const([-1, n, d], hint="shape"))
        em.insert_after(add)
        rewire(add.outputs[0], out, skip=[out.producer()])
        for v in (node.outputs[0], add.outputs[0]):  # 2-D now: no pinned 3-D shape
            pinned.pop(id(v), None)
            v.shape = None
        done += 1
    return done


def _restore_past_unknown_ops(graph: ir.Graph, pinned: dict[int, tuple[ir.Shape | None,
                                                                      ir.Shape | None]],
                              batch: int, name: str = BATCH) -> None:
    """ONNX shape inference stops at ops it has no schema for (com.microsoft ones, e.g.
    a fused MultiHeadAttention), leaving every value downstream shapeless, and ORT then
    misses fusions that read shapes (SkipLayerNormalization). A value whose two pinned
    shapes differ only in a leading batch dim gets that shape with the batch symbolic;
    one whose shapes agree keeps it."""
    for node in graph:
        for out in node.outputs:
            if out.shape is not None or id(out) not in pinned:
                continue
            sa, sb = pinned[id(out)]
            if sa is None or sb is None or len(sa) != len(sb) or not sa.is_static() \
                    or not sb.is_static():
                continue
            a, b = list(sa), list(sb)
            if a == b:
                out.shape = ir.Shape(a)
            elif a[0] == batch and a[1:] == b[1:]:
                out.shape = ir.Shape([ir.SymbolicDim(name), *a[1:]])
