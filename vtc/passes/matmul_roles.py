"""What each weight MatMul/Gemm of a vision encoder does, read from the graph's
structure (no names, no weight shapes): the roles `backend.int8_keep_fp32` names.

Per transformer block::

    x ─► LN ─► MatMul(Wq) ─► +b ─► Reshape/Transpose/·s ─┐            attention_in (×3)
          ├──► MatMul(Wk) ─► … ─────────────────────────┼─► Q·Kᵀ ─► Softmax ─► P·V
          └──► MatMul(Wv) ─► … ─────────────────────────┘    (or one fused
                                                              MultiHeadAttention)
      P·V ─► Transpose/Reshape ─► MatMul(Wo) ─► +b ─► +x                attention_out
      ─► LN ─► MatMul(W1) ─► +b ─► GELU ─► MatMul(W2) ─► +b ─► +x       mlp_in, mlp_out

* **attention core**: a MatMul of two activations (Q·Kᵀ, P·V; not one vtc emitted) or
  a fused attention node (`MultiHeadAttention`, `Attention`, …);
* **attention_in**: the weight MatMul's output reaches an input of an attention core
  through ops that only move or rescale it (Reshape, Transpose, Split, Slice, Concat,
  Cast, Identity, and Add/Sub/Mul/Div by a constant: the bias, the score scale);
* **attention_out**: its input comes back, through the same ops, from an attention
  core's output (the P·V product or the fused node's);
* **mlp_in** / **mlp_out**: a weight MatMul whose output, through elementwise and
  layout ops computed from that output alone (bias, GELU in any decomposition,
  QuickGELU, SwiGLU's split halves, the dynamic-batch pass's Reshapes), is the input of
  another weight MatMul: the first is mlp_in, the
  second mlp_out. A residual Add or a LayerNorm ends the region, so a block's MLP never
  reaches the next block's projections;
* **other**: every weight MatMul not placed above: classifier and projection heads,
  poolers, and anything the rules do not recognise (it is quantized unless `other` is
  named).

"Weight" means the second input is computed from initializers and constants alone, as
`vtc.passes.quantize` counts it; nodes vtc emitted (`vtc_*`) are never weight nodes.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import get_args

import onnx

from vtc.backends.options import Int8Role
from vtc.passes.precision import KEEP_PREFIX

ROLES: tuple[Int8Role, ...] = get_args(Int8Role)
WEIGHT_OPS = ("MatMul", "Gemm")
FUSED_ATTENTION = {"MultiHeadAttention", "Attention", "GroupQueryAttention",
                   "PackedMultiHeadAttention", "PackedAttention"}
# ops that pass a tensor on through their first (data) input; the rest must be static
_DATA_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast",
             "Split", "Slice", "Gather", "Expand", "Pad", "Tile"}
_SCALE_OPS = {"Add", "Sub", "Mul", "Div"}  # carry only with a static other operand
# ops that compute elementwise from their inputs (an MLP's activation)
_ELEMENTWISE = _SCALE_OPS | {
    "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Pow",
    "Sqrt", "Exp", "Neg", "Abs", "Clip", "Cast", "Identity", "Softplus", "Elu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Mish", "Min", "Max"} | _DATA_OPS
_LIMIT = 64  # nodes a walk visits at most from one weight node (a block holds fewer)


class _Graph:
    """Producer/consumer maps of a graph, its static values (from initializers,
    Constant and Shape nodes) and the values weight MatMuls read as weights."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        const = {i.name for i in g.initializer}
        static = set(const)
        for n in self.nodes:
            ins = [i for i in n.input if i]
            if n.op_type == "Constant" or (ins and all(i in const for i in ins)):
                const.update(n.output)
            if n.op_type in ("Constant", "Shape", "Size") or (ins and all(i in static
                                                                           for i in ins)):
                static.update(n.output)
        self.const, self.static = const, static

    def is_weight_op(self, n: onnx.NodeProto) -> bool:
        return (n.op_type in WEIGHT_OPS and not n.name.startswith(KEEP_PREFIX)
                and len(n.input) > 1 and n.input[1] in self.const)

    def is_core(self, n: onnx.NodeProto) -> bool:
        """An attention core: a fused attention node or a product of two activations."""
        if n.op_type in FUSED_ATTENTION:
            return True
        return (n.op_type == "MatMul" and not n.name.startswith(KEEP_PREFIX)
                and n.input[1] not in self.const)

    def carried(self, n: onnx.NodeProto, value: str) -> bool:
        """Whether `n` passes `value` on unchanged up to layout and a constant scale."""
        if n.op_type in _DATA_OPS:
            return n.input[0] == value
        if n.op_type == "Concat":
            return True
        if n.op_type in _SCALE_OPS:
            return all(i == value or i in self.static for i in n.input)
        return False

    def reaches_core(self, start: onnx.NodeProto) -> bool:
        """Forward from `start`'s output through carried ops to an attention core."""
        todo, seen = [start.output[0]], 0
        while todo and seen < _LIMIT:
            v = todo.pop()
            for c in self.consumers.get(v, []):
                seen += 1
                if self.is_core(c):
                    return True
                if self.carried(c, v):
                    todo.extend(o for o in c.output if o)
        return False

    def from_core(self, start: onnx.NodeProto) -> bool:
        """Backward from `start`'s first input through carried ops to an attention
        core's output."""
        v: str | None = start.input[0]
        for _ in range(_LIMIT):
            p = self.producer.get(v) if v else None
            if p is None:
                return False
            if self.is_core(p):
                return True
            if p.op_type in _DATA_OPS:
                v = p.input[0]
            elif p.op_type in _SCALE_OPS:
                live = [i for i in p.input if i not in self.static]
                v = live[0] if len(live) == 1 else None
            else:
                return False
        return False

    def mlp_outs(self, start: onnx.NodeProto) -> list[onnx.NodeProto]:
        """The weight nodes reading a value computed elementwise from `start`'s output
        alone (nodes visited in graph order, so a node joins once all its inputs have)."""
        region = {start.output[0]}
        heap = [self.index[id(c)] for c in self.consumers.get(start.output[0], [])]
        heapq.heapify(heap)
        found: list[onnx.NodeProto] = []
        done: set[int] = set()
        while heap and len(done) < _LIMIT:
            at = heapq.heappop(heap)
            if at in done:
                continue
            done.add(at)
            n = self.nodes[at]
            if self.is_weight_op(n):
                if n.input[0] in region:
                    found.append(n)
                continue
            if n.op_type not in _ELEMENTWISE:
                continue
            live = [i for i in n.input if i and i not in self.static]
            if not live or not all(i in region for i in live):
                continue  # reads something from outside (a residual Add): not the MLP
            if n.op_type in _DATA_OPS and n.input[0] not in region:
                continue
            for o in n.output:
                region.add(o)
                for c in self.consumers.get(o, []):
                    heapq.heappush(heap, self.index[id(c)])
        return found


def classify(model: onnx.ModelProto) -> dict[str, Int8Role]:
    """Node name → role of every weight MatMul/Gemm (the nodes `vtc.passes.quantize`
    would quantize), in graph order; see the module docstring for the rules."""
    g = _Graph(model)
    weights = [n for n in g.nodes if g.is_weight_op(n)]
    roles: dict[str, Int8Role] = {}
    for n in weights:
        if g.reaches_core(n):
            roles[n.name] = "attention_in"
        elif g.from_core(n):
            roles[n.name] = "attention_out"
    for n in weights:
        if n.name in roles:
            continue
        outs = [o for o in g.mlp_outs(n) if o.name not in roles]
        if outs:
            roles[n.name] = "mlp_in"
            roles.update({o.name: "mlp_out" for o in outs})
    return {n.name: roles.get(n.name, "other") for n in weights}


def count(roles: dict[str, Int8Role]) -> dict[Int8Role, int]:
    """Weight nodes per role, every role listed (0 where none)."""
    out = dict.fromkeys(ROLES, 0)
    for r in roles.values():
        out[r] += 1
    return out
