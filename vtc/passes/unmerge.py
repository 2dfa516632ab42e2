"""Unmerge: undo ToMe's merges before a consumer that needs the full patch grid.

A dense head (saliency, segmentation, depth) reshapes the last tokens back to
the `h × w` patch grid, which ToMe's fewer tokens no longer fill. Following
ToMe for Stable Diffusion, every merged token is copied back to all the
positions it came from, with static shapes and no scatter.

Before (ToMe has left N_L < N tokens; the grid Reshape cannot be fixed)::

    x_L[B, N_L, C] ─► LN ─► Slice(1:) ─► Transpose ─► Reshape[B, C, h, w] ─► ConvTranspose …

After (each merge k also emits d_k[B, n_k]: the output slot of each input token)::

    D_1 = d_1,   D_k = GatherElements(d_k, D_{k-1})            [B, N]  (original → final slot)
    x_L ─► GatherElements(x_L, Expand(D_L, [1, 1, C])) ─► x_full[B, N, C] ─► LN ─► … (unchanged)

`find_grid_consumer` walks forward from the last block's output, following
the token axis through token-wise ops (LayerNorm pieces, Linear MatMuls,
Slice, Transpose, Reshapes that keep the token axis whole) until a Reshape
splits it into a grid. A node it cannot see through is reported by name. A
graph output the walk reaches with the token axis whole is a token sequence
(an encoder whose memory a decoder reads): it is unmerged the same way, or
left merged with a `token_sizes` output beside it (`vtc.passes.token_sizes`).

A sequence-first stream (`[N_L, B, C]`, `Block.seq_first`) is transposed to
`[B, N_L, C]` for the gather and back; when x_L is itself a graph output, the
gathered `[B, N, C]` takes its place (and its name) among the graph outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from vtc.passes.emit import Emitter, rewire
from vtc.passes.graph import Block, is_const, static_dims
from vtc.passes.shape_fixup import ELEMENTWISE

# Ops that act on every token alike when the token axis is not reduced over.
_UNARY = frozenset({
    "Sqrt", "Relu", "Erf", "Sigmoid", "Tanh", "Neg", "Exp", "Log", "Cast", "Identity",
    "Softplus", "Gelu", "Abs", "Reciprocal", "Clip", "HardSigmoid", "LeakyRelu",
})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2"})
_NORM = frozenset({"LayerNormalization", "Softmax", "LogSoftmax"})


@dataclass
class GridSearch:
    """Result of the forward walk: grid Reshapes found, nodes the walk could not see through."""

    consumers: list[ir.Node] = field(default_factory=list)
    blockers: list[tuple[ir.Node, str]] = field(default_factory=list)
    outputs: list[ir.Value] = field(default_factory=list)  # token-sequence graph outputs

    def describe_blocker(self) -> str:
        node, why = self.blockers[0]
        return f"{node.op_type} {node.name!r} ({why})"


def _axes(node: ir.Node, rank: int) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        if not is_const(node.inputs[1]):
            return None
        raw = node.inputs[1].const_value.numpy().tolist()  # type: ignore[union-attr]
    else:
        attr = node.attributes.get("axes")
        raw = list(attr.value) if attr is not None else list(range(rank))
    return [int(a) % rank for a in raw]


def _reshape_axis(in_: list[int], out: list[int], t: int) -> tuple[str, int]:
    """Where the token axis t of `in_` goes in `out`: ("keep", j), ("split", j) or ("lost", -1)."""
    s0 = math.prod(in_[:t])
    for j in range(len(out)):
        if math.prod(out[:j]) != s0:
            continue
        if out[j] == in_[t]:
            return "keep", j
        for k in range(j + 2, len(out) + 1):
            if math.prod(out[j:k]) == in_[t]:
                return "split", j
    return "lost", -1


def _next_axis(node: ir.Node, v: ir.Value, t: int) -> tuple[str, int | str]:
    """How node treats token axis t of its input v: ("follow", t'), ("grid", _),
    ("end", _) for a consumer of some tokens only, or ("block", reason)."""
    op = node.op_type
    dims = static_dims(v)
    rank = len(dims) if dims is not None else -1
    if op in ELEMENTWISE or op in _UNARY:
        out = static_dims(node.outputs[0])
        return ("follow", t + (len(out) - rank)) if out is not None and rank >= 0 else (
            "block", "unknown shape")
    if op in _REDUCE or op in _NORM:
        axes = _axes(node, rank) if op in _REDUCE else [
            int(node.attributes["axis"].value) % rank if "axis" in node.attributes else rank - 1]
        if axes is None or t in axes:
            return "block", "reduces over the token axis"
        return "follow", t
    if op == "MatMul" and node.inputs[0] is v and t < rank - 1:
        return "follow", t
    if op == "Slice":
        return "follow", t
    if op == "Transpose":
        perm = list(node.attributes["perm"].value)
        return "follow", perm.index(t)
    if op in ("Gather", "Squeeze") or (op == "Unsqueeze"):
        if op == "Gather":
            ax = int(node.attributes["axis"].value) % rank if "axis" in node.attributes else 0
            return ("end", t) if ax == t else ("block", "gathers along another axis")
        out = static_dims(node.outputs[0])
        if out is None or dims is None:
            return "block", "unknown shape"
        kind, j = _reshape_axis(dims, out, t)
        return ("follow", j) if kind == "keep" else ("block", "squeezes the token axis")
    if op == "Reshape":
        out = static_dims(node.outputs[0])
        if out is None or dims is None:
            return "block", "unknown shape"
        kind, j = _reshape_axis(dims, out, t)
        if kind == "keep":
            return "follow", j
        if kind == "split":
            return "grid", j
        return "block", "folds the token axis into another axis"
    return "block", "vtc cannot follow the token axis through it"


def find_grid_consumer(x: ir.Value, axis: int = 1) -> GridSearch:
    """Walk forward from the token stream x `[B, N, C]` (token axis `axis`: 0 for a
    sequence-first `[N, B, C]`)."""
    res = GridSearch()
    todo: list[tuple[ir.Value, int]] = [(x, axis)]
    seen: set[tuple[int, int]] = set()
    while todo:
        v, t = todo.pop()
        if v.is_graph_output() and all(o is not v for o in res.outputs):
            res.outputs.append(v)
        for node, _idx in v.uses():
            if (id(node), t) in seen:
                continue
            seen.add((id(node), t))
            kind, arg = _next_axis(node, v, t)
            if kind == "follow":
                todo.extend((o, int(arg)) for o in node.outputs)
            elif kind == "grid":
                res.consumers.append(node)
            elif kind == "block":
                res.blockers.append((node, str(arg)))
    return res


def slots(em: Emitter, p: int, pos: ir.Value, val: ir.Value, t: int) -> ir.Value:
    """Output slot of every input token of one reduction, as float `[B, p + t]`.

    The reduction keeps the `p` protected tokens at slots 0..p-1. Its `t` candidate
    tokens are listed in any order by `pos` `[B, t]` (int64, their positions among the
    candidates: a permutation of 0..t-1) with `val` `[B, t]` (float, the slot each one
    lands in, merged tokens sharing their destination's slot). The inverse permutation
    is a TopK over the positions (ascending), so no scatter is needed.
    """
    f32 = np.float32
    _, inv = em.op("TopK", em.op("Cast", pos, to=ir.DataType.FLOAT), em.const([t]),
                   outputs=2, axis=-1, largest=0, sorted=1)
    d = em.op("GatherElements", val, inv, axis=1)  # [B, t]: slot of candidate i
    if not p:
        return d
    zero = em.op("Mul", em.slice(val, 0, 1, axis=1), em.const(0.0, f32))  # [B, 1]
    front = em.op("Add", zero, em.const(np.arange(p).reshape(1, -1), f32))
    return em.op("Concat", front, d, axis=1)


def ramp(em: Emitter, like: ir.Value, start: float, count: int, step: float = 1.0,
         dtype: type = np.float32) -> ir.Value:
    """`[B, count]` rows of `start, start + step, …` (B taken from like `[B, …]`)."""
    zero = em.op("Mul", em.op("Cast", em.slice(like, 0, 1, axis=1),
                              to=ir.DataType.from_numpy(np.dtype(dtype))),
                 em.const(0, dtype))
    return em.op("Add", zero, em.const((start + step * np.arange(count)).reshape(1, -1), dtype))


def compose(em: Emitter, total: ir.Value | None, d: ir.Value) -> ir.Value:
    """Slot map original token → slot after this merge: `[B, N]` float."""
    if total is None:
        return d
    return em.op("GatherElements", d, em.op("Cast", total, to=ir.DataType.INT64), axis=1)


def apply_unmerge(model: ir.Model, last: Block, total: ir.Value) -> None:
    """x_out `[B, N_L, C]` (or `[N_L, B, C]`) of the last block → `[B, N, C]` (or
    `[N, B, C]`) for every consumer, a graph output included."""
    em = Emitter(model.graph, "vtc_unmerge")
    idx = em.op("Cast", total, to=ir.DataType.INT64)
    x = last.x_out
    if last.seq_first:
        x = em.op("Transpose", x, perm=[1, 0, 2])
    full = em.take_rows(x, idx)
    if last.seq_first:
        full = em.op("Transpose", full, perm=[1, 0, 2])
    nodes = list(em.nodes)
    anchor = last.x_out.producer()
    assert anchor is not None
    em.insert_after(anchor)
    outs = model.graph.outputs
    for i, v in enumerate(outs):
        if v is last.x_out:  # the merged stream was the output: the full one replaces it
            name, v.name = v.name, f"{v.name}_merged"
            full.name, full.type = name, v.type
            outs[i] = full
    rewire(last.x_out, full, nodes)
