"""fp16 engines with fp32 decisions: convert a graph's arithmetic to float16 except
the nodes that decide which tokens merge or drop.

Before (fp32 throughout)::

    pixel_values f32 ─► patch embed ─► … ─► K ─► [vtc_tome3/… metric, scores, TopK,
                                                   weighted merge] ─► … ─► logits f32

After::

    pixel_values f32 ─► Cast f16 ─► patch embed ─► … ─► K f16 ─► Cast f32 ─►
        [vtc_* nodes, fp32] ─► Cast f16 ─► … ─► Cast f32 ─► logits f32

What stays fp32, and why:

* every node a reduction method, the size bias, the unmerge or the token-size
  bookkeeping emitted (their names start with `vtc_`): the similarity scores,
  the attention scores used for ranking, ArgMax/TopK and the index arithmetic are
  the merge/prune *decisions*; in fp16 (11-bit mantissa) near-ties among the
  cosine similarities round to equal values and decisions flip. The weighted
  average of the merged tokens is in the same group: it is O(N·C) bookkeeping and
  keeping it fp32 saves a cast round trip;
* proportional attention's log(size) bias is computed in fp32 and cast once;
* the graph's inputs and outputs (`keep_io_types`): callers feed and read float32.

What the decisions read (the keys, the attention probabilities) comes out of fp16
layers, so an fp16 engine can still decide differently from the fp32 engine on a
near-tie; the pipeline measures that as the deployment tier (`Report.deployment`),
never as parity.

vtc converts the graph itself rather than with onnxruntime's float16 converter: that
one puts a fp32→fp16→fp32 Cast pair on every edge between two kept nodes (948 Casts
on a ViT-S/16 with 12 ToMe merges), which both costs kernels and rounds the decisions
to fp16 after all. Here one Cast sits on each value that crosses between the two
regions, shared by all its consumers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from vtc.passes.model_io import save_model

KEEP_PREFIX = "vtc_"  # the prefix every node vtc's passes emit carries
# Ops that stay fp32 wherever they are: index-producing ops whose tie order must match
# the fp32 engine, and ops ORT runs in fp32 only (onnxruntime's converter keeps the same).
KEEP_OPS = frozenset({"TopK", "ArgMax", "ArgMin", "Range", "CumSum", "Resize", "Upsample",
                      "NonMaxSuppression", "RoiAlign", "RandomUniformLike"})
F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)  # 65504


def _kept(node: ir.Node) -> bool:
    has_graph = any(isinstance(a, ir.Attr) and a.type in (ir.AttributeType.GRAPH,
                                                          ir.AttributeType.GRAPHS)
                    for a in node.attributes.values())
    return (node.name is not None and node.name.startswith(KEEP_PREFIX)) \
        or node.op_type in KEEP_OPS or has_graph


class _Casts:
    """One shared Cast per value that crosses between the regions."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph, self.made = graph, 0
        self._cache: dict[tuple[int, ir.DataType], ir.Value] = {}

    def to(self, v: ir.Value, dtype: ir.DataType) -> ir.Value:
        key = (id(v), dtype)
        if key not in self._cache:
            if v.is_initializer() and v.const_value is not None:
                arr = v.const_value.numpy()
                if dtype == F16:  # fp32 masks such as -3.4e38 saturate, never become inf
                    arr = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
                else:
                    arr = arr.astype(np.float32)
                new = ir.Value(name=f"{v.name}_{'fp16' if dtype == F16 else 'fp32'}",
                               const_value=ir.tensor(arr))
                new.shape, new.dtype = v.shape, dtype
                self.graph.register_initializer(new)
            else:
                node = ir.node("Cast", [v], {"to": dtype},
                               name=f"precision_cast/{v.name}_to_{dtype.name.lower()}")
                new = node.outputs[0]
                new.name, new.shape, new.dtype = f"{node.name}:0", v.shape, dtype
                self.graph.append(node)
                self.made += 1
            self._cache[key] = new
        return self._cache[key]


def _retype(node: ir.Node) -> None:
    """A converted node's float outputs and float-typed attributes become fp16."""
    for out in node.outputs:
        if out.dtype == F32:
            out.dtype = F16
    to = node.attributes.get("to")
    if node.op_type == "Cast" and to is not None and to.value == F32:
        node.attributes["to"] = ir.Attr("to", ir.AttributeType.INT, F16)
    for key in ("value",):  # ConstantOfShape / Constant
        attr = node.attributes.get(key)
        if attr is not None and attr.type == ir.AttributeType.TENSOR \
                and attr.value.dtype == F32:
            node.attributes[key] = ir.AttrTensor(key, ir.tensor(
                np.clip(attr.value.numpy(), -FP16_MAX, FP16_MAX).astype(np.float16)))


def convert(model: ir.Model) -> dict[str, int]:
    """Rewrite `model` in place to fp16 arithmetic (module docstring). Returns
    {"fp16": nodes converted, "fp32": nodes kept, "casts": Casts added}."""
    g = model.graph
    nodes = list(g)
    kept = {id(n) for n in nodes if _kept(n)}
    home16: set[int] = set()  # values that will hold fp16
    for n in nodes:
        if id(n) not in kept:
            home16.update(id(o) for o in n.outputs if o.dtype == F32)
    casts = _Casts(g)
    for n in nodes:
        want = F32 if id(n) in kept else F16
        for i, v in enumerate(n.inputs):
            if v is None or v.dtype not in (F32, F16):
                continue
            is16 = id(v) in home16
            if want == F16 and not is16 and v.dtype == F32:
                n.replace_input_with(i, casts.to(v, F16))
            elif want == F32 and is16:
                n.replace_input_with(i, casts.to(v, F32))
    for n in nodes:
        if id(n) not in kept:
            _retype(n)
    for i, out in enumerate(list(g.outputs)):
        if id(out) in home16:  # keep_io_types: the graph still returns float32
            name = out.name
            out.name = f"{name}_fp16"
            back = casts.to(out, F32)
            back.name = name
            g.outputs[i] = back
    # fp16 nodes read weights through their fp16 copies; originals nobody reads go
    for v in list(g.initializers.values()):
        if not v.uses() and not v.is_graph_output():
            del g.initializers[v.name]  # type: ignore[arg-type]
    g.sort()
    return {"fp16": len(nodes) - len(kept), "fp32": len(kept), "casts": casts.made}


def to_fp16(src: Path, dst: Path) -> dict[str, int]:
    """Write `src` with fp16 arithmetic to `dst` (fp32 inputs, outputs and decisions;
    weights past the inline limit beside it, as `vtc.passes.model_io.save_model`)."""
    model = ir.load(str(src))
    counts = convert(model)
    save_model(model, dst)
    return counts
