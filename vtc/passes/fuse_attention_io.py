"""The layouts around a fused attention node (`vtc.passes.fuse_attention`).

`com.microsoft.MultiHeadAttention` reads q, k, v as `[B, N, H·D]` and writes
`[B, N, H·Dv]`; the exported graph splits heads into `Q [B, H, N, D]`,
`Kᵀ [B, H, D, N]`, `V [B, H, N, D]` (or, folded, `[B·H, N, D]`, `[B·H, D, N]`) and
merges them back after the AV MatMul::

    x[B, N, H·D] ─► Reshape[B, N, H, D] ─► Transpose(0, 2, 1, 3) ─► Q[B, H, N, D]
    y[B, N, H·D] ◄─ Reshape              ◄─ Transpose(0, 2, 1, 3) ◄─ AV[B, H, N, D]

`source_of` walks back from Q/Kᵀ/V through Reshape/Transpose/Identity (and scalar
Mul/Div, returned as a factor) to the first `[B, N, H·D]` value whose chain of moves
reproduces the head layout on a probe tensor (`np.arange`: exact, whatever the
exporter wrote); `target_of` does the same forward from the AV MatMul. When no such
value exists (sequence-first streams, packed in-projections) the head layout is
undone with emitted Reshape/Transpose nodes (`[0, 0, -1]`, `[-1, H, …]`: no batch
baked in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from vtc.passes.emit import Emitter
from vtc.passes.graph import is_const, static_dims

# Ops that only move data (what a head split / merge is made of).
MOVES = frozenset({"Reshape", "Transpose", "Identity"})


@dataclass(frozen=True)
class Layout:
    """One block's attention sizes: batch, heads, tokens N, head dims of Q/K (d) and
    V (dv); `folded`: heads folded into the batch (`[B·H, N, D]`)."""

    batch: int
    heads: int
    n: int
    d: int
    dv: int
    folded: bool

    def heads_of(self, x: np.ndarray, dim: int) -> np.ndarray:
        """`[B, N, H·dim]` → the exported head layout `[B, H, N, dim]` (or `[B·H, N, dim]`)."""
        h = x.reshape(self.batch, self.n, self.heads, dim).transpose(0, 2, 1, 3)
        return h.reshape(self.batch * self.heads, self.n, dim) if self.folded else h


def depends_on(v: ir.Value, target: ir.Value, limit: int = 64) -> bool:
    """Whether `v` is `target` or computed from it (a bounded walk back)."""
    stack, seen = [v], 0
    while stack and seen < limit:
        cur = stack.pop()
        seen += 1
        if cur is target:
            return True
        prod = cur.producer()
        if prod is not None:
            stack.extend(i for i in prod.inputs if i is not None and not is_const(i))
    return False


def scalar_factor(node: ir.Node, k: int) -> float | None:
    """The factor a Mul/Div by a constant scalar applies to its input `k`, else None."""
    if node.op_type not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    other = node.inputs[1 - k]
    if not is_const(other) or other.const_value.size != 1:  # type: ignore[union-attr]
        return None
    c = float(other.const_value.numpy().ravel()[0])  # type: ignore[union-attr]
    if node.op_type == "Mul":
        return c
    return 1.0 / c if k == 0 and c != 0.0 else None


def _move(node: ir.Node, x: np.ndarray) -> np.ndarray | None:
    """Apply a data move to a probe array (None when it is not a plain move)."""
    if node.op_type == "Identity":
        return x
    if node.op_type == "Transpose":
        perm = node.attributes.get_ints("perm", None)
        return x.transpose(perm) if perm is not None else x.T
    shape_v = node.inputs[1] if len(node.inputs) > 1 else None
    if shape_v is None or not is_const(shape_v):
        return None
    shape = [int(s) for s in shape_v.const_value.numpy().ravel()]  # type: ignore[union-attr]
    if node.attributes.get_int("allowzero", 0):
        if 0 in shape:
            return None
    else:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return x.reshape(shape)
    except ValueError:
        return None


def _moves_match(chain: list[ir.Node], start: np.ndarray, want: np.ndarray) -> bool:
    x: np.ndarray | None = start
    for node in chain:
        if node.op_type in MOVES:
            x = _move(node, x) if x is not None else None
    return x is not None and x.shape == want.shape and np.array_equal(x, want)


def _want(lay: Layout, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(probe `[B, N, C]`, the head layout the kind needs of it)."""
    dim = lay.dv if kind == "v" else lay.d
    x = np.arange(lay.batch * lay.n * lay.heads * dim).reshape(lay.batch, lay.n, -1)
    h = lay.heads_of(x, dim)
    return x, (np.swapaxes(h, -1, -2) if kind == "kt" else h)


def find_source(v: ir.Value, lay: Layout, kind: str, scaled: bool = True
                ) -> tuple[ir.Value, float] | None:
    """The `[B, N, H·D]` value behind `v` (kind: "q" `[B, H, N, D]`, "kt" `[B, H, D, N]`,
    "v") whose moves reproduce the head layout, or the `[B·N, H·D]` one where a
    dynamic-batch graph flattened the linear layer (`passes.dynamic_batch`); and the
    scalar factor the moves skipped applied. None when there is none."""
    probe, want = _want(lay, kind)
    flat = probe.reshape(-1, probe.shape[-1])
    chain: list[ir.Node] = []
    factor, cur = 1.0, v
    for _ in range(12):
        dims = static_dims(cur)
        if (dims == list(probe.shape) and _moves_match(chain, probe, want)) or (
                dims == list(flat.shape) and _moves_match(chain, flat, want)):
            return cur, factor
        node = cur.producer()
        if node is None:
            break
        dyn = [i for i, x in enumerate(node.inputs) if x is not None and not is_const(x)]
        f = scalar_factor(node, dyn[0]) if scaled and len(dyn) == 1 else None
        if node.op_type in MOVES and dyn == [0]:
            chain.insert(0, node)
        elif f is not None:
            factor *= f
        else:
            break
        cur = node.inputs[dyn[0]]  # type: ignore[assignment]
    return None


def source_of(em: Emitter, v: ir.Value, lay: Layout, kind: str, scaled: bool = True
              ) -> tuple[ir.Value, float]:
    """`[B, N, H·D]` input for MultiHeadAttention behind `v` (`find_source`; a flattened
    `[B·N, H·D]` one is viewed as `[B, N, H·D]` by a Reshape, not copied by the head
    moves), and the scalar factor the moves skipped applied; else the moves emitted."""
    found = find_source(v, lay, kind, scaled)
    if found is None:
        return canonical_in(em, v, lay, kind), 1.0
    src, factor = found
    if len(static_dims(src) or []) == 2:
        src = em.op("Reshape", src, em.const([-1, lay.n, (static_dims(src) or [0, 0])[1]]))
    return src, factor


def canonical_in(em: Emitter, v: ir.Value, lay: Layout, kind: str) -> ir.Value:
    """Emit the moves `[B, H, N, D]` / `[B, H, D, N]` (or folded) → `[B, N, H·D]`."""
    dims = static_dims(v) or []
    if lay.folded:
        v = em.op("Reshape", v, em.const([-1, lay.heads, dims[-2], dims[-1]]))
    v = em.op("Transpose", v, perm=[0, 3, 1, 2] if kind == "kt" else [0, 2, 1, 3])
    return em.op("Reshape", v, em.const([0, 0, -1]))


def canonical_out(em: Emitter, y: ir.Value, lay: Layout) -> ir.Value:
    """Emit `[B, N, H·Dv]` → the AV MatMul's layout `[B, H, N, Dv]` (or `[B·H, N, Dv]`)."""
    h = em.op("Reshape", y, em.const([0, 0, lay.heads, lay.dv]))
    h = em.op("Transpose", h, perm=[0, 2, 1, 3])
    return em.op("Reshape", h, em.const([-1, lay.n, lay.dv])) if lay.folded else h


def target_of(av_out: ir.Value, lay: Layout) -> ir.Value | None:
    """The `[B, N, H·Dv]` value the head merge after the AV MatMul ends in (or
    `[B·N, H·Dv]`, where a dynamic-batch graph flattened the out-projection), the moves on
    the way checked on a probe, each read only by the next; else None."""
    y = np.arange(lay.batch * lay.n * lay.heads * lay.dv).reshape(lay.batch, lay.n, -1)
    start = lay.heads_of(y, lay.dv)
    flat = y.reshape(-1, y.shape[-1])
    chain: list[ir.Node] = []
    cur = av_out
    for _ in range(8):
        dims = static_dims(cur)
        if (dims == list(y.shape) and _moves_match(chain, start, y)) or (
                dims == list(flat.shape) and _moves_match(chain, start, flat)):
            return None if cur.is_graph_output() else cur
        users = cur.consumers()
        if len(users) != 1 or cur.is_graph_output() or users[0].op_type not in MOVES:
            return None
        if users[0].inputs[0] is not cur:
            return None
        chain.append(users[0])
        cur = users[0].outputs[0]
    return None


def bias_4d(lay: Layout, arr: np.ndarray) -> np.ndarray:
    """A constant logit bias (broadcastable to the logits) as `[B|1, H|1, r, N]`."""
    if lay.folded:
        a = arr.reshape((1,) * (3 - arr.ndim) + arr.shape)
        return (a.reshape(lay.batch, lay.heads, *a.shape[1:]) if a.shape[0] != 1
                else a.reshape(1, 1, *a.shape[1:]))
    return arr.reshape((1,) * (4 - arr.ndim) + arr.shape)


def _const(v: ir.Value | None) -> np.ndarray | None:
    return v.const_value.numpy().ravel() if v is not None and v.const_value is not None else None


def rows_read(readers: list[ir.Node], p: ir.Value, n: int) -> int:
    """How many leading query rows of the probabilities `p` the readers need: P when
    every reader is a unit-step row Slice from a start ≥ 0 to an end ≤ P, else N."""
    rows = 0
    rank = len(static_dims(p) or [])
    for node in readers:
        ins = list(node.inputs)
        if node.op_type != "Slice" or ins[0] is not p or len(ins) < 4:
            return n
        consts = [_const(x) for x in ins[1:5]]
        starts, ends, axes = consts[0], consts[1], consts[2]
        steps = consts[3] if len(consts) > 3 else None
        if starts is None or ends is None or axes is None or (
                len(ins) > 4 and ins[4] is not None and steps is None):
            return n
        for i, ax in enumerate(axes):
            if int(ax) % rank != rank - 2:
                continue
            if int(starts[i]) < 0 or int(ends[i]) < 0 or (
                    steps is not None and int(steps[i]) != 1):
                return n
            rows = max(rows, min(int(ends[i]), n))
        if not any(int(ax) % rank == rank - 2 for ax in axes):
            return n
    return rows or n
