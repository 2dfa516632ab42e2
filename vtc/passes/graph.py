"""Finding transformer blocks in an ONNX graph from its structure alone.

No node or value names are read, so the same search works on graphs written
by the dynamo exporter, the TorchScript exporter (what optimum-cli writes)
and third-party files. A pre-norm block looks like this on the `[B, N, C]`
residual stream, whatever the exporter called things:

    x_in ─┬─► LN ─► Q,K,V ─► MatMul(Q, Kᵀ) ─► (scale/mask) ─► Softmax ─► MatMul(·, V) ─► proj ─┐
          └──────────────────────────────────────────────────────────────────────────► Add ─► x_mid
    x_mid ─┬─► LN ─► MLP ─┐
           └────────────► Add ─► x_out

The search starts from every Softmax whose logits are `[B, H, N, N]`
(self-attention), walks back to the `MatMul(Q, Kᵀ)` (its second input is
`Kᵀ [B, H, D, N]`), forward through the output projection to the first Add
whose other operand is an ancestor of the Softmax (the attention residual),
and from there to the Add that closes the MLP residual.

`torch.nn.MultiheadAttention` (and `nn.TransformerEncoderLayer`, built on it)
exports two other layouts, both accepted:

    heads folded into the batch:  logits[B·H, N, N], Kᵀ[B·H, D, N]       (folded)
    sequence-first stream:        x[N, B, C] (batch_first=False)          (seq_first)

The batch B that tells them apart is the graph input's first dim (static once
pinned). A stream `[N, N, C]` (batch = tokens) is taken as batch-first.
`vtc.passes.layout` presents such a block to the methods as `[B, H, …]` and
`[B, N, C]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from vtc.errors import InputError

# Ops that may sit between the QK MatMul and the Softmax (scale, bias, mask).
_LOGIT_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Identity"}
# Ops that may sit between the Softmax and the AV MatMul.
_PROB_OPS = {"IsNaN", "Where", "Cast", "Dropout", "Identity"}
# Ops between the AV MatMul and the attention residual Add.
_PROJ_OPS = {
    "Transpose", "Reshape", "MatMul", "Add", "Mul", "Gemm", "Flatten", "Identity", "Cast",
    "Squeeze", "Unsqueeze", "Einsum",
}


class GraphError(InputError):
    """The ONNX graph is not one vtc can rewrite (an input error)."""


class NoBlocksError(GraphError):
    pass


@dataclass
class Block:
    """One self-attention block found in the graph.

    tokens: N, the token count entering the block (static).
    key_t: the value Kᵀ fed to the QK MatMul: `[B, H, D, N]`, or `[B·H, D, N]` when
        `folded` (`vtc.passes.layout.method_view` gives the 4-D view).
    folded: attention runs over `[B·H, N, N]` (nn.MultiheadAttention).
    seq_first: the residual stream is `[N, B, C]` (token axis 0), not `[B, N, C]`.
    """

    index: int
    softmax: ir.Node
    qk_matmul: ir.Node
    key_t: ir.Value
    attn_add: ir.Node
    mlp_add: ir.Node | None
    x_in: ir.Value
    x_mid: ir.Value
    x_out: ir.Value
    tokens: int
    heads: int
    width: int
    batch: int = 1
    folded: bool = False
    seq_first: bool = False
    probs_view: ir.Value | None = None  # set by `layout.method_view` for a folded block

    @property
    def probs(self) -> ir.Value:
        """Attention probabilities `[B, H, N, N]` (the Softmax output, or its 4-D view)."""
        return self.probs_view if self.probs_view is not None else self.softmax.outputs[0]

    @property
    def token_axis(self) -> int:
        """The token axis of the residual stream: 1 (`[B, N, C]`) or 0 (`[N, B, C]`)."""
        return 0 if self.seq_first else 1


def initializer(graph: ir.Graph, arr: np.ndarray, name: str) -> ir.Value:
    """Register `arr` as a named initializer of `graph`; returns its value."""
    v = ir.Value(name=name, shape=ir.Shape(arr.shape),
                 type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)))
    v.const_value = ir.tensor(arr, name=name)
    graph.register_initializer(v)
    return v


def is_const(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None


def static_dims(v: ir.Value) -> list[int] | None:
    if v.shape is None:
        return None
    dims = list(v.shape)
    ints = [d for d in dims if isinstance(d, int)]
    return ints if len(ints) == len(dims) else None


def _ancestors(v: ir.Value, limit: int = 100_000) -> set[int]:
    """ids of every value v depends on (v included)."""
    seen: set[int] = set()
    stack = [v]
    while stack and len(seen) < limit:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        prod = cur.producer()
        if prod is not None:
            stack.extend(i for i in prod.inputs if i is not None)
    return seen


def _walk_back_to_matmul(v: ir.Value) -> ir.Node | None:
    cur = v
    for _ in range(8):
        prod = cur.producer()
        if prod is None:
            return None
        if prod.op_type == "MatMul":
            return prod
        if prod.op_type not in _LOGIT_OPS:
            return None
        dyn = [i for i in prod.inputs if i is not None and not is_const(i)]
        if prod.op_type == "Where":
            dyn = [i for i in prod.inputs[1:] if i is not None and not is_const(i)]
        if len(dyn) > 1:  # e.g. a size bias [B, 1, 1, N] added to the logits: follow the logits
            out = static_dims(prod.outputs[0])
            dyn = [i for i in dyn if static_dims(i) == out]
        if len(dyn) != 1:
            return None
        cur = dyn[0]
    return None


def _find_av_matmul(probs: ir.Value) -> ir.Node | None:
    """The MatMul(probs, V) downstream of a Softmax, through NaN guards and casts."""
    frontier, seen = [probs], set()
    for _ in range(6):
        nxt: list[ir.Value] = []
        for v in frontier:
            for node in v.consumers():
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type == "MatMul" and node.inputs[0] is v:
                    return node
                if node.op_type in _PROB_OPS and node.op_type != "IsNaN":
                    nxt.extend(node.outputs)
        frontier = nxt
    return None


def _find_residual_add(start: ir.Node, softmax_anc: set[int]) -> tuple[ir.Node, ir.Value] | None:
    """Follow the projection chain from `start` to the Add that adds a value
    the Softmax depends on (the block input)."""
    cur = start.outputs[0]
    for _ in range(16):
        users = cur.consumers()
        if len(users) != 1:
            return None
        node = users[0]
        if node.op_type == "Add":
            other = [i for i in node.inputs if i is not None and i is not cur]
            if len(other) == 1 and not is_const(other[0]) and id(other[0]) in softmax_anc:
                return node, other[0]
        if node.op_type not in _PROJ_OPS:
            return None
        cur = node.outputs[0]
    return None


def _find_mlp_add(x_mid: ir.Value) -> ir.Node | None:
    """The Add closing the MLP residual: `x_mid + MLP(LN(x_mid))` (pre-norm), or
    `y + MLP(y)` with `y = LN(x_mid)` (post-norm: x_mid feeds only the LayerNorm)."""
    users = x_mid.consumers()
    bases = [x_mid]
    if len(users) == 1 and users[0].op_type == "LayerNormalization":
        bases.append(users[0].outputs[0])
    for base in bases:
        for node in base.consumers():
            if node.op_type != "Add":
                continue
            other = [i for i in node.inputs if i is not None and i is not base]
            if len(other) == 1 and not is_const(other[0]) and id(base) in _ancestors(other[0]):
                return node
    return None


def _block_out(mlp_add: ir.Node | None, x_mid: ir.Value) -> ir.Value:
    """The block's output: the MLP residual Add, or the LayerNorm right after it
    (post-norm), or x_mid when no MLP was found."""
    if mlp_add is None:
        return x_mid
    out = mlp_add.outputs[0]
    users = out.consumers()
    post = mlp_add.inputs[0] is not x_mid and mlp_add.inputs[1] is not x_mid
    if post and len(users) == 1 and users[0].op_type == "LayerNormalization":
        return users[0].outputs[0]
    return out


def _graph_batch(graph: ir.Graph) -> int | None:
    """The static batch of the first graph input (dim 0), None when unknown."""
    shape = graph.inputs[0].shape if graph.inputs else None
    first = shape[0] if shape is not None and len(shape) else None
    return first if isinstance(first, int) else None


def _attention(node: ir.Node, batch: int | None
               ) -> tuple[ir.Node, ir.Value, int, int, bool] | None:
    """(QK MatMul, Kᵀ, N, batch, folded) of a self-attention Softmax, else None."""
    logits = node.inputs[0]
    dims = static_dims(logits) if logits is not None else None
    if logits is None or dims is None or len(dims) not in (3, 4) or dims[-1] != dims[-2]:
        return None  # not [B, H, N, N] / [B·H, N, N] self-attention (e.g. a pooling head)
    folded = len(dims) == 3
    b = batch if folded else dims[0]
    if b is None or dims[0] % b:
        return None
    qk = _walk_back_to_matmul(logits)
    if qk is None or qk.inputs[1] is None:
        return None
    key_t = qk.inputs[1]
    kd = static_dims(key_t)
    if kd is None or len(kd) != len(dims) or kd[-1] != dims[-1]:
        return None
    return qk, key_t, dims[-1], b, folded


def _block_at(node: ir.Node, batch: int | None, index: int) -> Block | None:
    """The block around one Softmax, or None when it is not a self-attention block."""
    att = _attention(node, batch)
    av = _find_av_matmul(node.outputs[0]) if att is not None else None
    if att is None or av is None:
        return None
    qk, key_t, n, b, folded = att
    logits = node.inputs[0]
    assert logits is not None
    found = _find_residual_add(av, _ancestors(logits))
    if found is None:
        return None
    attn_add, x_in = found
    x_mid = attn_add.outputs[0]
    xd = static_dims(x_mid)
    if xd is None or len(xd) != 3 or n not in xd[:2]:
        return None
    seq_first = xd[0] == n and xd[1] == b and not (xd[1] == n and xd[0] == b)
    if not seq_first and (xd[1] != n or xd[0] != b):
        return None
    mlp_add = _find_mlp_add(x_mid)
    ld = static_dims(logits) or []
    return Block(
        index=index, softmax=node, qk_matmul=qk, key_t=key_t, attn_add=attn_add,
        mlp_add=mlp_add, x_in=x_in, x_mid=x_mid,
        x_out=_block_out(mlp_add, x_mid),
        tokens=n, heads=ld[0] // b if folded else ld[1], width=xd[2], batch=b,
        folded=folded, seq_first=seq_first,
    )


def find_blocks(model: ir.Model) -> list[Block]:
    """Every self-attention block, in execution order.

    Raises NoBlocksError when none is found."""
    graph = model.graph
    graph.sort()
    batch = _graph_batch(graph)
    blocks: list[Block] = []
    for node in graph:
        if node.op_type != "Softmax":
            continue
        blk = _block_at(node, batch, len(blocks))
        if blk is not None:
            blocks.append(blk)
    if not blocks:
        softmaxes = sum(1 for n in graph if n.op_type == "Softmax")
        raise NoBlocksError(
            "no transformer block found: vtc looks for self-attention "
            f"(Softmax over [B, H, N, N] or [B·H, N, N] logits, {softmaxes} Softmax node(s) "
            "in this graph) followed by a residual Add on a static [B, N, C] or [N, B, C] "
            "stream; export the model with static shapes and attention as MatMul/Softmax"
        )
    return blocks


def mlp_width(blk: Block) -> int:
    """Width of the MLP's hidden layer: the first constant [C, M] weight after x_mid."""
    frontier, seen = [blk.x_mid], set()
    for _ in range(6):
        nxt: list[ir.Value] = []
        for v in frontier:
            for node in v.consumers():
                if id(node) in seen or node is blk.mlp_add:
                    continue
                seen.add(id(node))
                if node.op_type in ("MatMul", "Gemm") and is_const(node.inputs[1]):
                    dims = static_dims(node.inputs[1])  # type: ignore[arg-type]
                    if dims and len(dims) == 2 and blk.width in dims:
                        other = dims[1] if dims[0] == blk.width else dims[0]
                        return other
                nxt.extend(node.outputs)
        frontier = nxt
    return 4 * blk.width

