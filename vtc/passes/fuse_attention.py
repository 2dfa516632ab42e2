"""Fused attention for engines that run com.microsoft ops (ONNX Runtime): every
self-attention block `find_blocks` finds becomes one `com.microsoft.MultiHeadAttention`.

ORT's own optimizer fuses no attention in today's ViT exports, so the score tensor
`[B, H, N, N]` is written and read three times per block. This pass writes the fused
node itself, from the block structure only (QK MatMul, Softmax, AV MatMul, what sits
between them; no names)::

    before:
      q[B,N,C] ─► Reshape/Transpose ─► Q[B,H,N,D] ─► (·s_q) ─┐
      k[B,N,C] ─► Reshape/Transpose ─► Kᵀ[B,H,D,N] ─(·s_k)──►MatMul ─► ·s, +bias ─► Softmax ─┐
      v[B,N,C] ─► Reshape/Transpose ─► V[B,H,N,D] ───────────────────────────┐   (IsNaN/Where)
                                                                              └─► MatMul ◄────┘
                                         ─► Transpose/Reshape ─► y[B,N,C] ─► out-proj
    after:
      q, k, v ─► MultiHeadAttention(num_heads=H, scale=s·s_q·s_k,
                                    attention_bias=bias as [B|1, H|1, N, N]) ─► y ─► out-proj

* q, k, v are the values the head split starts from when a walk back through
  Reshape/Transpose reproduces the `[B, H, N, D]` layout on a probe tensor (an arange,
  so the check is exact); otherwise (folded `[B·H, N, D]` heads, sequence-first
  streams) a Transpose/Reshape from the 4-D value is emitted. The output side is the
  same, forward.
* Everything between the QK MatMul and the Softmax must be affine: scalar Mul/Div
  (folded into `scale`), Add/Sub of any broadcastable tensor (summed into
  `attention_bias`; all-zero constants dropped), Identity, same-type Cast. A bias of
  the batch and key only (vtc's proportional attention, `log(s)[B, 1, 1, N]`) rides in
  the keys instead: one more head dimension, 1 in q and `log(s) / scale` in k
  (`_fold_key_bias`; the CPU kernel runs slower with any `attention_bias`). A Where (a
  mask) keeps the block unfused.
* Between Softmax and the AV MatMul, Identity, same-type Cast, inference Dropout and
  the SDPA export's NaN guard `Where(IsNaN(p), 0, p)` are dropped. The guard is a no-op
  here because it only changes rows holding NaN, and a Softmax row is NaN only when
  its logits hold NaN/±inf: the logits are `s·QKᵀ + bias` with no mask, every constant
  bias term is checked finite and vtc's size bias is `log(s)`, `s ≥ 1`.
* Other readers of the probabilities (EViT's scores) get them recomputed beside the
  fused node from the same Q, Kᵀ and logit ops: only rows `[0, P)` when every reader
  is a row Slice ending at ≤ P (EViT's CLS rows), else all rows. The keys `Kᵀ` stay
  computed wherever a merge metric reads them; dead nodes are removed.

The result is not portable ONNX (TensorRT cannot parse com.microsoft ops): the compile
stage runs it on temp copies for engines whose class says `fuses_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from vtc.passes.dynamic_batch import PROBES, make_batch_dynamic
from vtc.passes.emit import Emitter
from vtc.passes.fuse_attention_io import (
    Layout,
    bias_4d,
    canonical_out,
    depends_on,
    rows_read,
    scalar_factor,
    source_of,
    target_of,
)
from vtc.passes.gelu_form import reorder_gelu
from vtc.passes.graph import (
    Block,
    GraphError,
    _find_av_matmul,
    find_blocks,
    is_const,
    static_dims,
)
from vtc.passes.model_io import infer_shapes, prepare, read_onnx, save_model

DOMAIN = "com.microsoft"
BATCH_PREFIX = "vtc_batch/"  # the names `make_batch_dynamic` emits
OP = "MultiHeadAttention"
# ops beyond the portable list the fused graph uses (it runs on ONNX Runtime only)
FUSED_OPS = frozenset({"Pad"})


@dataclass
class FuseResult:
    """What the pass did: blocks found, fused, and why the others were left unfused
    (block index → reason); `recomputed`: blocks whose probabilities are also read
    (EViT), recomputed beside the fused node."""

    blocks: int = 0
    fused: int = 0
    unfused: dict[int, str] = field(default_factory=dict)
    recomputed: int = 0


@dataclass
class _Logits:
    """The affine chain QK MatMul → Softmax: `scale`, bias terms (value, coefficient),
    and its nodes in order with the index of their logits input."""

    scale: float
    terms: list[tuple[ir.Value, float]]
    chain: list[tuple[ir.Node, int]]


def _logit_chain(blk: Block) -> _Logits | str:
    """Walk back from the Softmax input to the QK MatMul (see the module docstring)."""
    qk_out = blk.qk_matmul.outputs[0]
    cur = blk.softmax.inputs[0]
    post = 1.0
    terms: list[tuple[ir.Value, float]] = []
    chain: list[tuple[ir.Node, int]] = []
    while cur is not qk_out:
        node = cur.producer() if cur is not None else None
        if node is None or len(chain) > 8:
            return "the logits are not an affine function of the QK MatMul"
        ins = list(node.inputs)
        path = [i for i, v in enumerate(ins) if v is not None and depends_on(v, qk_out)]
        if len(path) != 1:
            return f"{node.op_type} between the QK MatMul and the Softmax mixes the logits"
        k = path[0]
        chain.insert(0, (node, k))
        if node.op_type == "Identity" or (
                node.op_type == "Cast" and node.outputs[0].dtype == ins[k].dtype):  # type: ignore[union-attr]
            pass
        elif node.op_type in ("Mul", "Div"):
            f = scalar_factor(node, k)
            if f is None:
                return f"{node.op_type} of the logits by a non-scalar"
            post *= f
        elif node.op_type in ("Add", "Sub"):
            if node.op_type == "Sub" and k == 1:  # t - logits: the logits change sign
                return "Sub of the logits from a tensor"
            other = ins[1 - k]
            assert other is not None
            terms.append((other, -post if node.op_type == "Sub" else post))
        else:
            return f"{node.op_type} between the QK MatMul and the Softmax (a mask?)"
        cur = ins[k]
    for t, _ in terms:
        if is_const(t) and not np.isfinite(t.const_value.numpy()).all():  # type: ignore[union-attr]
            return "a constant logit bias holds inf/NaN (a mask)"
    return _Logits(post, terms, chain)


def _guard_path(blk: Block, av: ir.Node) -> list[ir.Node] | str:
    """The nodes between the Softmax and the AV MatMul, all provable no-ops, else why not."""
    p = blk.softmax.outputs[0]
    cur, nodes = av.inputs[0], list[ir.Node]()
    while cur is not p:
        node = cur.producer() if cur is not None else None
        if node is None or len(nodes) > 6:
            return "the AV MatMul does not read the Softmax"
        ins = list(node.inputs)
        if node.op_type == "Where":
            cond = ins[0].producer() if ins[0] is not None else None
            zero = ins[1]
            if (cond is None or cond.op_type != "IsNaN" or cond.inputs[0] is not ins[2]
                    or not is_const(zero) or np.any(zero.const_value.numpy())):  # type: ignore[union-attr]
                return "a Where between Softmax and AV MatMul that is not the NaN guard"
            nodes += [node, cond]
        elif node.op_type == "Dropout":
            if len(ins) > 2 and ins[2] is not None and (
                    not is_const(ins[2]) or ins[2].const_value.numpy().any()):  # type: ignore[union-attr]
                return "a Dropout in training mode"
            nodes.append(node)
        elif not (node.op_type == "Identity" or (
                node.op_type == "Cast" and node.outputs[0].dtype == p.dtype)):
            return f"{node.op_type} between Softmax and AV MatMul"
        else:
            nodes.append(node)
        cur = ins[2] if node.op_type == "Where" else ins[0]
    inside = {id(n) for n in nodes} | {id(av)}
    for node in nodes:
        for out in node.outputs:
            if any(id(u) not in inside for u in out.consumers()) or out.is_graph_output():
                return "the guarded probabilities are read elsewhere"
    return nodes


def _copy(node: ir.Node, inputs: list[ir.Value | None]) -> ir.Node:
    attrs = {k: a.value for k, a in node.attributes.items()}
    new = ir.node(node.op_type, inputs, attrs or None, domain=node.domain,
                  name=f"{node.name}/rows")
    new.outputs[0].name = f"{new.name}:0"
    return new


def _recompute(em: Emitter, blk: Block, lg: _Logits, readers: list[ir.Node], rows: int) -> None:
    """probs rows `[0, rows)` (`[B, H, rows, N]`) from the same Q, Kᵀ and logit ops,
    for the readers of the Softmax output other than the AV MatMul."""
    p, n = blk.softmax.outputs[0], blk.tokens
    q = blk.qk_matmul.inputs[0]
    assert q is not None
    rank = len(static_dims(q) or [])

    def cut(v: ir.Value) -> ir.Value:
        d = static_dims(v)
        if rows < n and d is not None and len(d) >= 2 and d[-2] == n:
            return em.slice(v, 0, rows, len(d) - 2)
        return v

    cur: ir.Value = em.op("MatMul", em.slice(q, 0, rows, rank - 2) if rows < n else q,
                          blk.qk_matmul.inputs[1])
    for node, k in [*lg.chain, (blk.softmax, 0)]:
        ins: list[ir.Value | None] = [cur if i == k else (cut(v) if v is not None else None)
                                      for i, v in enumerate(node.inputs)]
        new = _copy(node, ins)
        em.nodes.append(new)
        cur = new.outputs[0]
    for reader in readers:
        for i, v in enumerate(reader.inputs):
            if v is p:
                reader.replace_input_with(i, cur)


def _attention_bias(em: Emitter, lay: Layout, terms: list[tuple[ir.Value, float]]
                    ) -> ir.Value | None:
    """Σ coefficient·term as `[B|1, H|1, N, N]` (None when it is all zeros)."""
    total: np.ndarray | None = None
    for t, c in terms:
        if is_const(t):
            arr = bias_4d(lay, c * t.const_value.numpy().astype(np.float32))  # type: ignore[union-attr]
            total = arr if total is None else total + arr
    parts: list[tuple[ir.Value, list[int]]] = []
    if total is not None and np.any(total):
        parts.append((em.const(total, np.float32, "attention_bias"), list(total.shape)))
    for t, c in terms:
        if not is_const(t):
            shared = _head_shared(t, lay)
            if shared is not None:  # one bias for every head: broadcast it, do not copy it
                t, dims = shared, [lay.batch, 1, 1, lay.n]
            else:
                dims = static_dims(t) or []
            v = t if c == 1.0 else em.op("Mul", t, em.const(c, np.float32))
            parts.append(canonical_bias(em, lay, v, dims) if shared is None else (v, dims))
    if not parts:
        return None
    out, shape = parts[0]
    for v, d in parts[1:]:
        out, shape = em.op("Add", out, v), [max(a, b) for a, b in zip(shape, d, strict=True)]
    if shape[2:] == [lay.n, lay.n]:
        return out
    return em.op("Expand", out, em.const([1, 1, lay.n, lay.n]))


def _head_shared(t: ir.Value, lay: Layout) -> ir.Value | None:
    """For folded heads: the `[B, 1, 1, N]` bias behind `t` when `t` is it expanded over
    the heads and folded (`Reshape(Expand(b, [1, H, 1, 1]), [B·H, 1, N])`: vtc's own
    proportional attention, `layout.logit_bias`), else None. The fused node then reads
    one `[B, 1, N, N]` bias instead of `[B, H, N, N]`."""
    fold = t.producer()
    if not lay.folded or fold is None or fold.op_type != "Reshape" or fold.inputs[0] is None:
        return None
    wide = fold.inputs[0].producer()
    if wide is None or wide.op_type != "Expand" or wide.inputs[0] is None:
        return None
    base = wide.inputs[0]
    return base if static_dims(base) == [lay.batch, 1, 1, lay.n] else None


def _key_bias(lay: Layout, terms: list[tuple[ir.Value, float]]
              ) -> tuple[tuple[ir.Value, float] | None, list[tuple[ir.Value, float]]]:
    """The first logit bias that depends on the batch and the key only (`[B, 1, 1, N]`:
    vtc's proportional attention, `log(s)`; folded heads: its per-head copy undone), and
    the other terms."""
    for i, (t, c) in enumerate(terms):
        if is_const(t):
            continue
        shared = _head_shared(t, lay)
        base = shared if shared is not None else t
        if shared is not None or (not lay.folded
                                  and static_dims(base) == [lay.batch, 1, 1, lay.n]):
            return (base, c), terms[:i] + terms[i + 1:]
    return None, terms


def _fold_key_bias(em: Emitter, lay: Layout, q: ir.Value, k: ir.Value,
                   key: tuple[ir.Value, float], scale: float) -> tuple[ir.Value, ir.Value]:
    """A key-only logit bias b `[B, 1, 1, N]` (times c) as one more head dimension:
    q' = [q, 1] and k' = [k, c·b / scale] per head, so that scale · q'·k' = scale · q·k +
    c·b. ORT's MultiHeadAttention then runs without `attention_bias` (a `[B, 1, N, N]`
    tensor that, on the CPU, costs a slower kernel: 1.5× the time of an unbiased one
    at N = 949, 1.2× with the extra dimension, bench notes in docs/fused-attention.md);
    V keeps its head size."""
    h, d = lay.heads, lay.d
    t, c = key
    q5 = em.op("Pad", em.op("Reshape", q, em.const([0, 0, h, d])),
               em.const([0, 0, 0, 0, 0, 0, 0, 1]), em.const(1.0, np.float32))
    if c / scale != 1.0:
        t = em.op("Mul", t, em.const(c / scale, np.float32))
    kb = em.op("Expand", em.op("Reshape", t, em.const([-1, lay.n, 1, 1])),
               em.const([1, 1, h, 1]))  # [B, N, H, 1]
    k5 = em.op("Concat", em.op("Reshape", k, em.const([0, 0, h, d])), kb, axis=3)
    wide = em.const([0, 0, h * (d + 1)])
    return em.op("Reshape", q5, wide), em.op("Reshape", k5, wide)


def canonical_bias(em: Emitter, lay: Layout, v: ir.Value, dims: list[int]
                   ) -> tuple[ir.Value, list[int]]:
    """A dynamic logit bias `dims`, broadcastable to the logits → 4-D `[B|1, H|1, r, N]`
    (and that shape)."""
    if lay.folded:
        d = [1] * (3 - len(dims)) + dims
        head = [lay.batch, lay.heads] if d[0] != 1 else [1, 1]
        shape = [*head, d[1], d[2]]
        return em.op("Reshape", v, em.const([-1, *shape[1:]] if d[0] != 1 else shape)), shape
    if len(dims) < 4:
        shape = [1] * (4 - len(dims)) + dims
        return em.op("Reshape", v, em.const(shape)), shape
    return v, dims


def _fuse_block(graph: ir.Graph, blk: Block) -> str | int:
    """Rewrite one block; returns why it was left unfused, or how many probability rows
    were recomputed for other readers (0: none)."""
    av = _find_av_matmul(blk.softmax.outputs[0])
    q4, kt = blk.qk_matmul.inputs[0], blk.qk_matmul.inputs[1]
    v4 = av.inputs[1] if av is not None else None
    qd, vd = (static_dims(q4) if q4 is not None else None), (
        static_dims(v4) if v4 is not None else None)
    if av is None or q4 is None or kt is None or v4 is None or qd is None or vd is None:
        return "no AV MatMul with static Q/V shapes"
    if q4.dtype != ir.DataType.FLOAT:
        return f"{q4.dtype} attention (the pass writes float32 only)"
    if blk.softmax.attributes.get_int("axis", -1) not in (-1, len(qd) - 1):
        return "Softmax over another axis than the keys"
    p = blk.softmax.outputs[0]
    if p.is_graph_output():
        return "the probabilities are a graph output"
    lay = Layout(blk.batch, blk.heads, blk.tokens, qd[-1], vd[-1], blk.folded)
    lg = _logit_chain(blk)
    guards = _guard_path(blk, av)
    if isinstance(lg, str) or isinstance(guards, str):
        return lg if isinstance(lg, str) else str(guards)
    if any(static_dims(t) is None for t, _ in lg.terms):
        return "a logit bias without a static shape"
    em = Emitter(graph, f"vtc_mha{blk.index}", FUSED_OPS)
    q, fq = source_of(em, q4, lay, "q")
    k, fk = source_of(em, kt, lay, "kt")
    v, _ = source_of(em, v4, lay, "v", scaled=False)
    scale = float(lg.scale * fq * fk)
    key, terms = _key_bias(lay, lg.terms)
    if key is not None:
        q, k = _fold_key_bias(em, lay, q, k, key, scale)
    bias = _attention_bias(em, lay, terms)
    mha = ir.node(OP, [q, k, v, None, None, bias] if bias is not None else [q, k, v],
                  {"num_heads": lay.heads, "scale": scale},
                  domain=DOMAIN, name=f"vtc_mha{blk.index}/{OP}")
    y = mha.outputs[0]
    y.name, y.dtype = f"{mha.name}:0", ir.DataType.FLOAT
    y.shape = ir.Shape([lay.batch, lay.n, lay.heads * lay.dv])
    em.nodes.append(mha)
    inside = {id(n) for n in guards} | {id(av)}
    readers = [u for u in p.consumers() if id(u) not in inside]
    rows = rows_read(readers, p, lay.n) if readers else 0
    if readers:
        _recompute(em, blk, lg, readers, rows)
    old, new = target_of(av.outputs[0], lay), y
    if old is None:
        old, new = av.outputs[0], canonical_out(em, y, lay)
    elif len(static_dims(old) or []) == 2:  # a flattened out-projection reads [B·N, H·Dv]
        new = em.op("Reshape", y, em.const([-1, lay.heads * lay.dv]))
    graph.extend(em.nodes)
    for user, idx in list(old.uses()):
        user.replace_input_with(idx, new)
    return rows


def fuse_attention(model: ir.Model) -> FuseResult:
    """Fuse every self-attention block of a static-shape model in place (see the module
    docstring). Raises NoBlocksError when the graph has no block."""
    blocks = find_blocks(model)
    res = FuseResult(blocks=len(blocks))
    for blk in blocks:
        out = _fuse_block(model.graph, blk)
        if isinstance(out, str):
            res.unfused[blk.index] = out
        else:
            res.fused += 1
            res.recomputed += out > 0
    if res.fused:
        model.opset_imports[DOMAIN] = 1
        RemoveUnusedNodesPass()(model)
        model.graph.sort()
        infer_shapes(model)  # the emitted values' static shapes
    return res


def _rename(graph: ir.Graph, old: str, new: str) -> None:
    """Rename nodes and values whose names start with `old` (prefix → `new`)."""
    values = [*graph.initializers.values(), *(o for n in graph for o in n.outputs)]
    for v in values:
        if v.name is not None and v.name.startswith(old):
            v.name = new + v.name[len(old):]
    for node in graph:
        if node.name is not None and node.name.startswith(old):
            node.name = new + node.name[len(old):]


def fuse_file(src: Path, dst: Path) -> FuseResult:
    """`src` → `dst` with attention fused and every erf GELU in the form ONNX Runtime
    fuses (`vtc.passes.gelu_form`). A symbolic batch is pinned at two probe
    batches, both fused, and made symbolic again (`make_batch_dynamic`). Raises
    GraphError when nothing could be fused (the caller keeps `src`)."""
    proto = read_onnx(src)
    first = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    dynamic = bool(first) and not first[0].HasField("dim_value")
    model = prepare(ir.from_proto(proto), PROBES[0] if dynamic else None)
    res = fuse_attention(model)
    if not res.fused:
        raise GraphError(f"{src.name}: no attention block could be fused "
                         f"({'; '.join(sorted(set(res.unfused.values())))})")
    reorder_gelu(model)  # the GELU form ORT fuses, bit for bit the same (passes.gelu_form)
    if dynamic:
        twin = prepare(ir.from_proto(read_onnx(src)), PROBES[1])
        fuse_attention(twin)
        reorder_gelu(twin)
        for m in (model, twin):  # a graph made dynamic before holds the names it would emit
            _rename(m.graph, BATCH_PREFIX, f"{BATCH_PREFIX}0")
        make_batch_dynamic(model, twin, name=first[0].dim_param or "batch")
    save_model(model, dst)
    return res
