"""FastV as a graph pass on an exported decoder (onnxruntime-genai's builder layout,
`vtc.passes.decoder_layers`): after layer L-1, keep the R visual tokens the last prompt
token attends to most, and give layers L.. the shorter sequence.

The image sits at a static span ``[start, start + V)`` of the prompt (the bundle's chat
template puts it there; the runtime checks it); the text around it may have any length.
The same graph serves the prompt and every decoding step: with one new token
(S = 1) the selection keeps it, so decoding needs no second graph.

Before (layers L-1 and L)::

    qkv_{L-1} ─► GQA_{L-1}(…, seqlens_k, total) ─► … ─► (res, mlp_out) ─► SkipSimplifiedLN_L ─► …
                                                        GQA_L(…, seqlens_k, total)

After::

    qkv_{L-1} ─► Slice(q of the last token), Slice(k) ─► rotary at positions past+0..S-1
        ─► softmax(q·kᵀ·scale)[B, Hkv, G, S] ─► ReduceMean ─► score[B, S] (fp32)
    score ─► Where(visual ∧ S>1, score, 2) ─► TopK(S - D·[S>1]) ─► sort ─► idx[B, S']
    (res, mlp_out) ─► GatherElements(idx) ─► SkipSimplifiedLN_L ─► …
    GQA_L..(…, seqlens_k - D, total - D, position_ids = past + idx)

D = V - R. Layers L.. thus hold a cache D entries shorter; their positions stay the
original ones (FastV keeps the kept tokens' rotary positions), so decoding step t runs
those layers at cache index ``seqlens_k - D`` and rotary position ``seqlens_k``. With
onnxruntime-genai's shared past/present buffer (one ``max_length`` buffer per layer,
filled up to ``seqlens_k``), the shorter caches need nothing from the runtime.

Scores are as in `vtc.methods.fastv`: layer L-1's softmax row of the last query,
averaged over heads (head h reads key/value head h // (H / Hkv)), recomputed here from
that layer's own query and key projections (GroupQueryAttention applies rotary inside
and does not expose its probabilities). Everything the selection computes is fp32,
whatever the decoder's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from vtc.passes.base import Pass
from vtc.passes.decoder_layers import DecoderLayer, DecoderStructureError, find_layers
from vtc.passes.emit import Emitter

EXTRA_OPS = frozenset({"Greater", "And", "GreaterOrEqual", "Less", "Neg"})
_INT_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class FastVPlan:
    """layer: L (1 ≤ L < layers); start, visual: the image's span [start, start + V);
    keep: R (1 ≤ R ≤ V)."""

    layer: int
    start: int
    visual: int
    keep: int

    @property
    def dropped(self) -> int:
        return self.visual - self.keep


def _check(layers: list[DecoderLayer], plan: FastVPlan) -> None:
    n = len(layers)
    if not 1 <= plan.layer < n:
        raise DecoderStructureError(f"fastv.layer is {plan.layer} but the decoder has {n} "
                                    f"layers; give 1 ≤ L < {n}")
    if not 1 <= plan.keep <= plan.visual:
        raise DecoderStructureError(f"fastv keeps {plan.keep} of {plan.visual} visual tokens; "
                                    f"give 1..{plan.visual}")
    for lay in layers:
        a = lay.attention.attributes
        bad = [k for k, ok in (("rotary_interleaved", 0), ("softcap", 0.0),
                               ("local_window_size", -1))
               if k in a and a[k].value not in (ok, float(ok))]
        extra = len(lay.attention.inputs) > 10 and lay.attention.inputs[10] is not None
        if bad or extra:
            raise DecoderStructureError(
                f"attention node {lay.attention.name!r} uses "
                f"{', '.join(bad) or 'an attention bias'}; FastV's decoder pass supports "
                "plain causal GroupQueryAttention with half-split rotary")


def _in(node: ir.Node, i: int) -> ir.Value:
    v = node.inputs[i]
    if v is None:
        raise DecoderStructureError(f"attention node {node.name!r} has no input {i}")
    return v


class _Build(Emitter):
    def f(self, x: ir.Value) -> ir.Value:
        return self.op("Cast", x, to=ir.DataType.FLOAT)

    def rotary(self, x: ir.Value, cos: ir.Value, sin: ir.Value, hd: int) -> ir.Value:
        """x ``[B, S, h, hd]``; cos/sin ``[S, 1, hd/2]`` → half-split rotary of x."""
        half = hd // 2
        x1, x2 = self.slice(x, 0, half, 3), self.slice(x, half, hd, 3)
        a = self.op("Sub", self.op("Mul", x1, cos), self.op("Mul", x2, sin))
        b = self.op("Add", self.op("Mul", x2, cos), self.op("Mul", x1, sin))
        return self.op("Concat", a, b, axis=-1)


def _scores(e: _Build, lay: DecoderLayer, past: ir.Value, seq: ir.Value) -> ir.Value:
    """score ``[B, S]``: layer `lay`'s last-query softmax row, mean over heads (fp32)."""
    att = lay.attention
    h, hkv, hd = lay.heads, lay.kv_heads, lay.head_dim
    if lay.packed:
        qkv = _in(att, 0)
        q = e.slice(qkv, 0, h * hd, 2)
        k = e.slice(qkv, h * hd, (h + hkv) * hd, 2)
    else:
        q, k = _in(att, 0), _in(att, 1)
    q_last = e.f(e.op("Slice", q, e.const([-1]), e.const([_INT_MAX]), e.const([1])))
    q4 = e.op("Reshape", q_last, e.const([0, 1, h, hd]))
    k4 = e.op("Reshape", e.f(k), e.const([0, -1, hkv, hd]))
    pos = e.op("Add", e.op("Range", e.const(0), seq, e.const(1)), past)  # [S]
    cos_c, sin_c = e.f(_in(att, 7)), e.f(_in(att, 8))
    cos = e.op("Unsqueeze", e.op("Gather", cos_c, pos, axis=0), e.const([1]))  # [S, 1, hd/2]
    sin = e.op("Unsqueeze", e.op("Gather", sin_c, pos, axis=0), e.const([1]))
    cos_l = e.op("Slice", cos, e.const([-1]), e.const([_INT_MAX]), e.const([0]))  # last query
    sin_l = e.op("Slice", sin, e.const([-1]), e.const([_INT_MAX]), e.const([0]))
    qr = e.rotary(q4, cos_l, sin_l, hd)  # [B, 1, H, hd]
    kr = e.rotary(k4, cos, sin, hd)  # [B, S, Hkv, hd]
    qg = e.op("Reshape", e.op("Transpose", qr, perm=[0, 2, 1, 3]),
              e.const([0, hkv, h // hkv, hd]))  # [B, Hkv, G, hd]
    kt = e.op("Transpose", kr, perm=[0, 2, 3, 1])  # [B, Hkv, hd, S]
    logits = e.op("Mul", e.op("MatMul", qg, kt), e.const(lay.scale, np.float32))
    probs = e.op("Softmax", logits, axis=-1)
    return e.reduce("ReduceMean", probs, [1, 2], keepdims=0)  # type: ignore[no-any-return]


def _rotary_outside(graph: ir.Graph, lay: DecoderLayer, positions: ir.Value,
                    seqlens: ir.Value, total: ir.Value) -> None:
    """Layer `lay` behind the cut: rotary at the kept tokens' original `positions`
    ``[B, S']``, applied before the attention (GroupQueryAttention on the CPU derives
    positions from the cache length, ignoring ``position_ids`` in a first prompt), then
    the attention with rotary off, the shorter cache length and total."""
    node = lay.attention
    h, hkv, hd = lay.heads, lay.kv_heads, lay.head_dim
    e = _Build(graph, f"/vtc/fastv_rotary{lay.index}")
    cos_c, sin_c = node.inputs[7], node.inputs[8]
    cos = e.op("Unsqueeze", e.op("Gather", cos_c, positions, axis=0), e.const([2]))
    sin = e.op("Unsqueeze", e.op("Gather", sin_c, positions, axis=0), e.const([2]))

    def rot(x: ir.Value, heads: int) -> ir.Value:
        x4 = e.op("Reshape", x, e.const([0, 0, heads, hd]))
        return e.op("Reshape", e.rotary(x4, cos, sin, hd), e.const([0, 0, heads * hd]))

    if lay.packed:
        qkv = _in(node, 0)
        q = rot(e.slice(qkv, 0, h * hd, 2), h)
        k = rot(e.slice(qkv, h * hd, (h + hkv) * hd, 2), hkv)
        v = e.slice(qkv, (h + hkv) * hd, (h + 2 * hkv) * hd, 2)
        node.replace_input_with(0, e.op("Concat", q, k, v, axis=-1))
    else:
        node.replace_input_with(0, rot(_in(node, 0), h))
        node.replace_input_with(1, rot(_in(node, 1), hkv))
    e.insert_before(node)
    node.replace_input_with(5, seqlens)
    node.replace_input_with(6, total)
    node.replace_input_with(7, None)
    node.replace_input_with(8, None)
    node.attributes["do_rotary"] = ir.AttrInt64("do_rotary", 0)


def apply(model: ir.Model, plan: FastVPlan, layers: list[DecoderLayer] | None = None
          ) -> dict[str, int]:
    """Insert the cut (module docstring) into `model` in place; returns what it did.
    `layers`: the model's layers, already found and checked against `plan`."""
    if layers is None:
        layers = find_layers(model)
        _check(layers, plan)
    graph = model.graph
    prev, cut = layers[plan.layer - 1], layers[plan.layer]
    if cut.norm.op_type not in ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization"):
        raise DecoderStructureError(f"layer {plan.layer} opens with {cut.norm.op_type}, not a "
                                    "Skip…LayerNormalization of (residual, MLP output)")
    e = _Build(graph, f"/vtc/fastv{plan.layer}", EXTRA_OPS)
    att = prev.attention
    seqlens, total = att.inputs[5], att.inputs[6]
    assert seqlens is not None and total is not None
    q_in = att.inputs[0]
    assert q_in is not None
    seq = e.op("Gather", e.op("Shape", q_in), e.const(1), axis=0)  # S (int64 scalar)
    past = e.op("Sub", e.op("Cast", total, to=ir.DataType.INT64), seq)
    score = _scores(e, prev, past, seq)
    pos = e.op("Range", e.const(0), seq, e.const(1))
    prompt = e.op("Greater", seq, e.const(1))
    visual = e.op("And", e.op("And", e.op("GreaterOrEqual", pos, e.const(plan.start)),
                              e.op("Less", pos, e.const(plan.start + plan.visual))), prompt)
    ranked = e.op("Where", e.op("Unsqueeze", visual, e.const([0])), score,
                  e.const(2.0, np.float32))
    drop = e.op("Mul", e.op("Cast", prompt, to=ir.DataType.INT64), e.const(plan.dropped))
    k = e.op("Unsqueeze", e.op("Sub", seq, drop), e.const([0]))
    _, idx = e.op("TopK", ranked, k, outputs=2, axis=-1, largest=1, sorted=1)
    idx = e.sort_ascending(idx, k)  # [B, S']
    gamma = cut.norm.inputs[2]
    width = gamma.shape[0] if gamma is not None and gamma.shape is not None else None
    if not isinstance(width, int):
        raise DecoderStructureError(f"norm {cut.norm.name!r} has no static weight width; vtc "
                                    "expects the builder's [D] norm weights")
    new_in = [e.gather_rows(_in(cut.norm, j), idx, width) for j in (0, 1)]
    d32 = e.const(plan.dropped, np.int32)
    seqlens_cut = e.op("Sub", seqlens, d32)
    total_cut = e.op("Sub", total, d32)
    positions = e.op("Add", idx, past)  # [B, S'] original positions
    e.insert_before(cut.norm)
    for j in (0, 1):
        cut.norm.replace_input_with(j, new_in[j])
    for lay in layers[plan.layer:]:
        _rotary_outside(graph, lay, positions, seqlens_cut, total_cut)
    return {"layer": plan.layer, "kept": plan.keep, "dropped": plan.dropped,
            "nodes": sum(1 for n in graph if n.name and n.name.startswith(e.prefix))}


class FastVDecoder(Pass):
    """`apply` as a pass: requires finds the layers and checks the plan against them;
    ensures the cut's layers read the shorter cache (done: what `apply` returns)."""

    name = "fastv"

    def __init__(self, plan: FastVPlan) -> None:
        super().__init__()
        self.plan = plan
        self._layers: list[DecoderLayer] = []

    def requires(self, model: ir.Model) -> None:
        self._layers = find_layers(model)
        _check(self._layers, self.plan)

    def apply(self, model: ir.Model) -> bool:
        self.done = apply(model, self.plan, self._layers)
        return True

    def ensures(self, model: ir.Model) -> None:
        for lay in self._layers[self.plan.layer:]:
            att = lay.attention
            total = att.inputs[6]
            node = total.producer() if total is not None else None
            if node is None or not (node.name or "").startswith(f"/vtc/fastv{self.plan.layer}"):
                raise DecoderStructureError(f"{att.name!r} after the cut does not read the "
                                            "shortened cache length")
