"""Finding the layers of an exported decoder from its structure: the graph
onnxruntime-genai's model builder writes (any precision: MatMul, or MatMulNBits at int4).

One layer on the ``[B, S, D]`` residual stream, as the builder writes it (layer 0's
input norm is a plain SimplifiedLayerNormalization of ``inputs_embeds``)::

    (residual, mlp_out of layer i-1) ─► SkipSimplifiedLayerNorm ─┬─► normed ─► qkv MatMul(s)
                                                                 └─► sum (the new residual)
    qkv ─► GroupQueryAttention(query, key?, value?, past_key, past_value, seqlens_k,
                               total_sequence_length, cos_cache, sin_cache, position_ids?)
        ─► o_proj ─► SkipSimplifiedLayerNorm(residual) ─► MLP ─► mlp_out

The search reads no node or value names: it takes every GroupQueryAttention node in
graph order (one per layer) and walks back from its query input, through the
projection (MatMul / MatMulNBits, an optional bias Add, Cast), to the norm that feeds
it. A graph with no GroupQueryAttention, or whose attention is not fed by such a norm,
is refused with the structure expected (`DecoderStructureError`).

Rotary positions come in two layouts: inside the attention (``do_rotary=1``, cos/sin
caches as its inputs 7 and 8: Llama, Mistral; positions are the cache index), or
outside it (Qwen2.5-VL's M-RoPE: a com.microsoft ``MRotaryEmbedding`` (or
``RotaryEmbedding``) node on the query and on the key, reading the graph's
``position_ids`` ``[3, B, S]``, then the attention with ``do_rotary=0``)::

    norm ─► q MatMul (+ bias) ─► MRotaryEmbedding(q, position_ids, cos, sin) ─► GQA.query
         ─► k MatMul (+ bias) ─► MRotaryEmbedding(k, position_ids, cos, sin) ─► GQA.key

`DecoderLayer.rotary` holds a layer's (query, key) rotary nodes in the second layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from vtc.passes.graph import GraphError

NORMS = ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
         "SkipLayerNormalization", "LayerNormalization")
_PROJ = ("MatMul", "MatMulNBits", "Add", "Cast", "Gemm")
ROTARY = ("MRotaryEmbedding", "RotaryEmbedding")  # rotary outside the attention
EXPECTED = ("a decoder as onnxruntime-genai's model builder writes it: one "
            "com.microsoft GroupQueryAttention per layer, its query projected from the "
            "layer's (Skip)SimplifiedLayerNormalization")


class DecoderStructureError(GraphError):
    """The decoder's layers could not be found (the message names the structure)."""


@dataclass
class DecoderLayer:
    """One decoder layer: its attention node and the norm that opens it.

    heads/kv_heads from the attention's attributes; head_dim = the rotary cache's width
    × 2 (full rotary, as Llama and Mistral have); packed: Q, K and V arrive as one
    ``[B, S, (H + 2·Hkv)·hd]`` tensor in the query input."""

    index: int
    attention: ir.Node
    norm: ir.Node
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    packed: bool
    rotary: tuple[ir.Node, ...] = ()  # (query, key) rotary nodes when outside the attention

    @property
    def positions(self) -> ir.Value | None:
        """The positions the layer's outside rotary reads (``[3, B, S]`` for M-RoPE);
        None when the attention applies rotary itself."""
        return self.rotary[0].inputs[1] if self.rotary else None


def _attr(node: ir.Node, name: str, default: float | int) -> float | int:
    a = node.attributes.get(name)
    return default if a is None else a.value  # type: ignore[no-any-return]


def _norm_of(v: ir.Value) -> ir.Node | None:
    for _ in range(6):
        node = v.producer()
        if node is None:
            return None
        if node.op_type in NORMS:
            return node
        if node.op_type not in _PROJ:
            return None
        v = node.inputs[0]  # type: ignore[assignment]
        if v is None:
            return None
    return None


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    return None


def find_layers(model: ir.Model) -> list[DecoderLayer]:
    """The decoder's layers in order (`DecoderStructureError` naming what it expected)."""
    nodes = [n for n in model.graph if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise DecoderStructureError(f"no GroupQueryAttention node; vtc expects {EXPECTED}")
    layers = []
    for i, node in enumerate(nodes):
        rotary = _rotary_outside(node)
        query = rotary[0].inputs[0] if rotary else node.inputs[0]
        norm = _norm_of(query) if query is not None else None
        if norm is None:
            raise DecoderStructureError(
                f"attention node {node.name!r} (layer {i}) is not fed by a norm through a "
                f"projection; vtc expects {EXPECTED}")
        cos = _const(rotary[0].inputs[2] if rotary else
                     node.inputs[7] if len(node.inputs) > 7 else None)
        if cos is None or not (rotary or int(_attr(node, "do_rotary", 0))):
            raise DecoderStructureError(
                f"attention node {node.name!r} applies no rotary embedding from a constant "
                f"cos cache; vtc expects {EXPECTED} (do_rotary=1, or rotary nodes on its "
                "query and key)")
        key = node.inputs[1] if len(node.inputs) > 1 else None
        heads = int(_attr(node, "num_heads", 0))
        hd = 2 * int(cos.shape[-1])
        layers.append(DecoderLayer(
            index=i, attention=node, norm=norm, heads=heads,
            kv_heads=int(_attr(node, "kv_num_heads", heads)), head_dim=hd,
            scale=float(_attr(node, "scale", 0.0)) or 1.0 / float(np.sqrt(hd)),
            packed=key is None or key.name == "", rotary=rotary))
    return layers


def _rotary_outside(att: ir.Node) -> tuple[ir.Node, ...]:
    """The (query, key) rotary nodes feeding `att` when it applies none itself (module
    docstring), else ()."""
    if int(_attr(att, "do_rotary", 0)):
        return ()
    found = []
    for j in (0, 1):
        v = att.inputs[j] if len(att.inputs) > j else None
        node = v.producer() if v is not None else None
        while node is not None and node.op_type == "Cast" and node.inputs[0] is not None:
            node = node.inputs[0].producer()  # fp16 decoders compute rotary in fp32
        if node is None or node.op_type not in ROTARY or node.inputs[1] is None:
            return ()
        found.append(node)
    if found[0].inputs[1] is not found[1].inputs[1]:
        raise DecoderStructureError(f"the rotary nodes of {att.name!r} read different "
                                    "positions; vtc expects one position input per layer")
    return tuple(found)
