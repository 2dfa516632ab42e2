"""Visual-token cuts inside an exported decoder (onnxruntime-genai's builder layout,
`vtc.passes.decoder_layers`): at each cut's layer L keep R of the visual tokens, and
give layers L.. the shorter sequence. One pass runs every LM cut of a bundle in layer
order (FastV, each stage of PyramidDrop, a visual-token exit), since each cut selects
among what the one before it left and reads the positions it gave.

The image sits at a static span ``[start, start + V)`` of the prompt (the bundle's chat
template puts it there; the runtime checks it); the text around it may have any length.
The same graph serves the prompt and every decoding step: with one new token (S = 1)
a cut keeps it, so decoding needs no second graph.

A cut (`CutStage`) is described by what its method's reference code does:

* ``score``: whose attention ranks the visual tokens — ``previous`` (layer L-1's, as
  that layer ran: FastV), ``own`` (layer L's own query and key projections on its input,
  before it runs: PyramidDrop) or ``none`` (every visual token goes: a visual-token exit);
  the score is the last prompt token's softmax row, averaged over heads (head h reads
  key/value head h // (H / Hkv)), recomputed in fp32 from the projections with rotary at
  the tokens' positions (GroupQueryAttention applies rotary inside and exposes no
  probabilities);
* ``positions``: ``keep`` — the kept tokens keep their rotary positions (FastV, DyVTE) —
  or ``compact`` — positions are renumbered 0, 1, … after the cut (PyramidDrop's
  reference code), which is the cache index GroupQueryAttention derives by itself.

Before (layers L-1 and L)::

    qkv_{L-1} ─► GQA_{L-1}(…, seqlens_k, total) ─► … ─► (res, mlp_out) ─► SkipSimplifiedLN_L
        ─► qkv_L ─► GQA_L(…, seqlens_k, total)

After (score ``previous`` or ``none``: the gather sits before layer L's norm)::

    qkv_{L-1} ─► Slice(q of the last token), Slice(k) ─► rotary at positions p[B, S]
        ─► softmax(q·kᵀ·scale)[B, Hkv, G, S] ─► ReduceMean ─► score[B, S] (fp32)
    score ─► Where(visual ∧ S>1, score, 2) ─► TopK(S - D·[S>1]) ─► sort ─► idx[B, S']
    (res, mlp_out) ─► GatherElements(idx) ─► SkipSimplifiedLN_L ─► qkv_L ─► GQA_L(…,
        seqlens_k - ΣD, total - ΣD)

After (score ``own``: the gather sits after layer L's projections)::

    SkipSimplifiedLN_L ─► qkv_L[B, S, ·] ─► score from q, k of qkv_L (as above) ─► idx
    qkv_L ─► GatherElements(idx) ─► GQA_L(…, seqlens_k - ΣD, total - ΣD)
    SkipSimplifiedLN_L's residual sum ─► GatherElements(idx) ─► layer L's residual add

D = V - R per cut. Layers behind a cut hold a cache ΣD entries shorter (with
onnxruntime-genai's shared past/present buffer, one ``max_length`` buffer per layer
filled up to ``seqlens_k``, that needs nothing from the runtime). With ``compact``
positions GroupQueryAttention's own rotary (at the cache index) is right; with ``keep``
positions the layers behind the cut get rotary at the kept tokens' positions applied
before the attention, whose own rotary is turned off (on the CPU it derives positions
from the cache length and ignores ``position_ids`` in a first prompt). Everything a
selection computes is fp32, whatever the decoder's precision.

A decoder whose rotary sits outside the attention (Qwen2.5-VL's M-RoPE: ``position_ids``
``[3, B, S]`` read by an ``MRotaryEmbedding`` on each layer's query and key,
`vtc.passes.decoder_layers`) takes ``keep`` cuts only (a renumbering of 3-D positions is
not defined): the scores read the attention's query and key, which carry their rotary
already; a cut gathers the positions ``[3, B, S] → [3, B, S']``, and the rotary nodes
of the layers behind it read the gathered ones (an ``own`` cut's layer reads those
before its cut: its rotary runs before the gather)::

    position_ids[3, B, S] ─► GatherElements(idx broadcast to [3, B, S'], axis 2)
        ─► MRotaryEmbedding(q_L.., ·), MRotaryEmbedding(k_L.., ·) ─► GQA_L..
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from vtc.passes.base import Pass
from vtc.passes.decoder_layers import DecoderLayer, DecoderStructureError, find_layers
from vtc.passes.emit import Emitter, rewire

EXTRA_OPS = frozenset({"Greater", "And", "GreaterOrEqual", "Less", "Neg"})
_INT_MAX = np.iinfo(np.int64).max
SCORES = ("previous", "own", "none")
POSITIONS = ("keep", "compact")
PREFIX = "/vtc/cut"


@dataclass(frozen=True)
class CutStage:
    """One cut: layer L (1 ≤ L < layers) is the first to read the shorter sequence; keep
    R of the visual tokens that reach it; score and positions as the module docstring
    says."""

    layer: int
    keep: int
    score: str = "previous"
    positions: str = "keep"


@dataclass(frozen=True)
class CutPlan:
    """The image's span [start, start + visual) and the cuts, in layer order (each keeps
    R of the tokens the one before it left)."""

    start: int
    visual: int
    stages: tuple[CutStage, ...]

    def reaching(self) -> list[int]:
        """Visual tokens reaching each stage."""
        out, v = [], self.visual
        for st in self.stages:
            out.append(v)
            v = st.keep
        return out


def _check_attention(lay: DecoderLayer) -> None:
    a = lay.attention.attributes
    bad = [k for k, ok in (("rotary_interleaved", 0), ("softcap", 0.0),
                           ("local_window_size", -1))
           if k in a and a[k].value not in (ok, float(ok))]
    extra = len(lay.attention.inputs) > 10 and lay.attention.inputs[10] is not None
    if bad or extra:
        raise DecoderStructureError(
            f"attention node {lay.attention.name!r} uses "
            f"{', '.join(bad) or 'an attention bias'}; vtc's decoder cuts support plain "
            "causal GroupQueryAttention with half-split rotary")


def check(layers: list[DecoderLayer], plan: CutPlan) -> None:
    """Refuse a plan the decoder cannot take (DecoderStructureError naming the misfit)."""
    n = len(layers)
    prev = 0
    for st, reach in zip(plan.stages, plan.reaching(), strict=True):
        if not 1 <= st.layer < n:
            raise DecoderStructureError(f"a cut at layer {st.layer} but the decoder has {n} "
                                        f"layers; give 1 ≤ L < {n}")
        if st.layer <= prev:
            raise DecoderStructureError(f"cuts at layers {[s.layer for s in plan.stages]}; "
                                        "give each a later layer than the one before")
        prev = st.layer
        if not 0 <= st.keep <= reach:
            raise DecoderStructureError(f"the cut at layer {st.layer} keeps {st.keep} of "
                                        f"{reach} visual tokens; give 0..{reach}")
        if st.score not in SCORES or st.positions not in POSITIONS:
            raise DecoderStructureError(f"cut at layer {st.layer}: score {st.score!r}, "
                                        f"positions {st.positions!r}; give one of {SCORES} "
                                        f"and one of {POSITIONS}")
    if layers and layers[0].rotary:
        compact = [st.layer for st in plan.stages if st.positions == "compact"]
        if compact:
            raise DecoderStructureError(
                f"the cut at layer {compact[0]} renumbers the kept tokens' positions, but "
                "this decoder's rotary positions are an input (M-RoPE: [3, B, S]) with no "
                "such renumbering; keep the positions (positions: keep)")
    for lay in layers[plan.stages[0].layer - 1 if plan.stages else n:]:
        _check_attention(lay)


def _in(node: ir.Node, i: int) -> ir.Value:
    v = node.inputs[i] if i < len(node.inputs) else None
    if v is None:
        raise DecoderStructureError(f"attention node {node.name!r} has no input {i}")
    return v


class _Build(Emitter):
    def f(self, x: ir.Value) -> ir.Value:
        return self.op("Cast", x, to=ir.DataType.FLOAT)

    def rotary(self, x: ir.Value, cos: ir.Value, sin: ir.Value, hd: int) -> ir.Value:
        """x ``[B, S, h, hd]``; cos/sin ``[b, S, 1, hd/2]`` → half-split rotary of x."""
        half = hd // 2
        x1, x2 = self.slice(x, 0, half, 3), self.slice(x, half, hd, 3)
        a = self.op("Sub", self.op("Mul", x1, cos), self.op("Mul", x2, sin))
        b = self.op("Add", self.op("Mul", x2, cos), self.op("Mul", x1, sin))
        return self.op("Concat", a, b, axis=-1)

    def cos_sin(self, att: ir.Node, positions: ir.Value, fp32: bool
                ) -> tuple[ir.Value, ir.Value]:
        """The attention's rotary caches at `positions` ``[b, S]`` → ``[b, S, 1, hd/2]``."""
        out = []
        for i in (7, 8):
            c = self.op("Gather", _in(att, i), positions, axis=0)
            out.append(self.op("Unsqueeze", self.f(c) if fp32 else c, self.const([2])))
        return out[0], out[1]

    def last(self, x: ir.Value, axis: int) -> ir.Value:
        return self.op("Slice", x, self.const([-1]), self.const([_INT_MAX]), self.const([axis]))


def _qkv(e: _Build, lay: DecoderLayer) -> tuple[ir.Value, ir.Value]:
    """The layer's query ``[B, S, H·hd]`` and key ``[B, S, Hkv·hd]`` projections."""
    att = lay.attention
    h, hkv, hd = lay.heads, lay.kv_heads, lay.head_dim
    if lay.packed:
        qkv = _in(att, 0)
        return e.slice(qkv, 0, h * hd, 2), e.slice(qkv, h * hd, (h + hkv) * hd, 2)
    return _in(att, 0), _in(att, 1)


def _scores(e: _Build, lay: DecoderLayer, positions: ir.Value) -> ir.Value:
    """score ``[B, S]``: layer `lay`'s last-query softmax row at `positions` ``[b, S]``,
    mean over heads (fp32)."""
    h, hkv, hd = lay.heads, lay.kv_heads, lay.head_dim
    q, k = _qkv(e, lay)
    q4 = e.op("Reshape", e.f(e.last(q, 1)), e.const([0, 1, h, hd]))
    k4 = e.op("Reshape", e.f(k), e.const([0, -1, hkv, hd]))
    if lay.rotary:  # rotary outside the attention: its query and key carry it already
        qr, kr = q4, k4
    else:
        cos, sin = e.cos_sin(lay.attention, positions, fp32=True)
        qr = e.rotary(q4, e.last(cos, 1), e.last(sin, 1), hd)  # [B, 1, H, hd]
        kr = e.rotary(k4, cos, sin, hd)  # [B, S, Hkv, hd]
    qg = e.op("Reshape", e.op("Transpose", qr, perm=[0, 2, 1, 3]),
              e.const([0, hkv, h // hkv, hd]))  # [B, Hkv, G, hd]
    kt = e.op("Transpose", kr, perm=[0, 2, 3, 1])  # [B, Hkv, hd, S]
    logits = e.op("Mul", e.op("MatMul", qg, kt), e.const(lay.scale, np.float32))
    probs = e.op("Softmax", logits, axis=-1)
    return e.reduce("ReduceMean", probs, [1, 2], keepdims=0)  # type: ignore[no-any-return]


def _rotary_outside(graph: ir.Graph, lay: DecoderLayer, positions: ir.Value) -> None:
    """Layer `lay` behind a ``keep`` cut: rotary at the kept tokens' `positions`
    ``[B, S']`` applied before the attention, the attention's own rotary off."""
    node = lay.attention
    h, hkv, hd = lay.heads, lay.kv_heads, lay.head_dim
    e = _Build(graph, f"{PREFIX}_rotary{lay.index}")
    cos, sin = e.cos_sin(node, positions, fp32=False)

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
    node.replace_input_with(7, None)
    node.replace_input_with(8, None)
    node.attributes["do_rotary"] = ir.AttrInt64("do_rotary", 0)


def _width(v: ir.Value, what: str) -> int:
    w = v.shape[-1] if v.shape is not None else None
    if not isinstance(w, int):
        raise DecoderStructureError(f"{what} {v.name!r} has no static last dimension; vtc "
                                    "expects the builder's static hidden sizes")
    return w


def _gather_after_projection(e: _Build, lay: DecoderLayer, idx: ir.Value) -> None:
    """Score ``own``: layer L's q/k/v inputs and its norm's residual sum keep the rows in
    `idx` (nodes go before the attention)."""
    norm, att = lay.norm, lay.attention
    if norm.op_type not in ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization") \
            or len(norm.outputs) < 4 or not norm.outputs[3].uses():
        raise DecoderStructureError(f"layer {lay.index} opens with {norm.op_type} without a "
                                    "residual-sum output; vtc expects the builder's "
                                    "Skip…LayerNormalization")
    res = norm.outputs[3]
    kept_res = e.gather_rows(res, idx, _width(res, "residual"))
    for j in ((0,) if lay.packed else (0, 1, 2)):
        x = _in(att, j)
        att.replace_input_with(j, e.gather_rows(x, idx, _width(x, "projection")))
    mine = list(e.nodes)
    e.insert_before(att)
    rewire(res, kept_res, mine)


def _gather_before_norm(e: _Build, lay: DecoderLayer, idx: ir.Value) -> None:
    """Score ``previous`` / ``none``: layer L's norm reads the rows in `idx` of its
    (residual, MLP output) inputs."""
    norm = lay.norm
    if norm.op_type not in ("SkipSimplifiedLayerNormalization", "SkipLayerNormalization"):
        raise DecoderStructureError(f"layer {lay.index} opens with {norm.op_type}, not a "
                                    "Skip…LayerNormalization of (residual, MLP output)")
    gamma = norm.inputs[2]
    if gamma is None:
        raise DecoderStructureError(f"norm {norm.name!r} has no weight")
    width = _width(gamma, "norm weight")
    new_in = [e.gather_rows(_in(norm, j), idx, width) for j in (0, 1)]
    e.insert_before(norm)
    for j in (0, 1):
        norm.replace_input_with(j, new_in[j])


def apply(model: ir.Model, plan: CutPlan, layers: list[DecoderLayer] | None = None
          ) -> dict[str, object]:
    """Insert every cut of `plan` (module docstring) into `model` in place; returns what
    it did. `layers`: the model's layers, already found and checked against `plan`."""
    if layers is None:
        layers = find_layers(model)
        check(layers, plan)
    graph = model.graph
    first = layers[0].attention
    seqlens, total = _in(first, 5), _in(first, 6)
    dropped = 0
    # None: positions are the cache index; with rotary outside the attention (M-RoPE)
    # they are the graph's position input [3, B, S]
    mrope = layers[0].positions
    positions: ir.Value | None = mrope
    # per layer: cut seqlens_k, total, the positions behind the cut, and (rotary outside
    # the attention) the positions its rotary nodes read, before the gather of an ``own``
    # cut at that layer
    per_layer: dict[int, tuple[ir.Value, ir.Value, ir.Value | None, ir.Value | None]] = {}
    done = []
    stages = plan.stages
    for n, (st, reach) in enumerate(zip(stages, plan.reaching(), strict=True)):
        lay = layers[st.layer]
        e = _Build(graph, f"{PREFIX}{st.layer}", EXTRA_OPS)
        anchor = _in(lay.attention, 0) if st.score == "own" else _in(lay.norm, 0)
        shape = e.op("Shape", anchor)
        seq = e.op("Gather", shape, e.const(1), axis=0)  # S reaching the cut (int64)
        total_c = e.op("Sub", e.op("Cast", total, to=ir.DataType.INT64), e.const(dropped))
        past = e.op("Sub", total_c, seq)
        pos = e.op("Range", e.const(0), seq, e.const(1))  # [S]
        p_in = positions if positions is not None else e.op(
            "Unsqueeze", e.op("Add", pos, past), e.const([0]))  # [b, S]
        prompt = e.op("Greater", seq, e.const(1))
        visual = e.op("And", e.op("And", e.op("GreaterOrEqual", pos, e.const(plan.start)),
                                  e.op("Less", pos, e.const(plan.start + reach))), prompt)
        if st.score == "none":
            batch = e.op("Slice", shape, e.const([0]), e.const([2]), e.const([0]))
            score = e.op("Expand", e.const(0.0, np.float32), batch)
        else:
            score = _scores(e, layers[st.layer - 1] if st.score == "previous" else lay, p_in)
        ranked = e.op("Where", e.op("Unsqueeze", visual, e.const([0])), score,
                      e.const(2.0, np.float32))
        drop = e.op("Mul", e.op("Cast", prompt, to=ir.DataType.INT64),
                    e.const(reach - st.keep))
        k = e.op("Unsqueeze", e.op("Sub", seq, drop), e.const([0]))
        _, idx = e.op("TopK", ranked, k, outputs=2, axis=-1, largest=1, sorted=1)
        idx = e.sort_ascending(idx, k)  # [B, S']
        dropped += reach - st.keep
        d32 = e.const(dropped, np.int32)
        cut = (e.op("Sub", seqlens, d32), e.op("Sub", total, d32))
        if st.positions == "keep" and mrope is not None:  # [3, B, S] → [3, B, S']
            three = e.const([3])
            full = e.op("Expand", p_in, e.op("Concat", three, e.op("Shape", ranked), axis=0))
            idx3 = e.op("Expand", e.op("Unsqueeze", idx, e.const([0])),
                        e.op("Concat", three, e.op("Shape", idx), axis=0))
            positions = e.op("GatherElements", full, idx3, axis=2)
        elif st.positions == "keep":
            full = e.op("Expand", p_in, e.op("Shape", ranked))  # [B, S]
            positions = e.op("GatherElements", full, idx, axis=1)  # [B, S'] kept positions
        else:
            positions = None
        if st.score == "own":
            _gather_after_projection(e, lay, idx)
        else:
            _gather_before_norm(e, lay, idx)
        end = stages[n + 1].layer if n + 1 < len(stages) else len(layers)
        for i in range(st.layer, end):
            own_here = st.score == "own" and i == st.layer  # its rotary runs before the gather
            per_layer[i] = (*cut, positions, p_in if own_here else positions)
        done.append({"layer": st.layer, "kept": st.keep, "dropped": reach - st.keep,
                     "score": st.score, "positions": st.positions})
    for i, (sl, tot, pos_i, rot_i) in per_layer.items():
        att = layers[i].attention
        att.replace_input_with(5, sl)
        att.replace_input_with(6, tot)
        if layers[i].rotary:  # M-RoPE nodes before the attention: their position input
            if rot_i is not None:
                for node in layers[i].rotary:
                    node.replace_input_with(1, rot_i)
        elif pos_i is not None:
            _rotary_outside(graph, layers[i], pos_i)
    nodes = sum(1 for x in graph if x.name and x.name.startswith(PREFIX))
    return {"cuts": done, "nodes": nodes}


class DecoderCuts(Pass):
    """`apply` as a pass: requires finds the layers and checks the plan against them;
    ensures every layer behind a cut reads a shortened cache length."""

    name = "lm_cuts"

    def __init__(self, plan: CutPlan) -> None:
        super().__init__()
        self.plan = plan
        self._layers: list[DecoderLayer] = []

    def requires(self, model: ir.Model) -> None:
        self._layers = find_layers(model)
        check(self._layers, self.plan)

    def apply(self, model: ir.Model) -> bool:
        self.done = apply(model, self.plan, self._layers)
        return bool(self.plan.stages)

    def ensures(self, model: ir.Model) -> None:
        if not self.plan.stages:
            return
        for lay in self._layers[self.plan.stages[0].layer:]:
            att = lay.attention
            total = att.inputs[6]
            node = total.producer() if total is not None else None
            if node is None or not (node.name or "").startswith(PREFIX):
                raise DecoderStructureError(f"{att.name!r} after a cut does not read the "
                                            "shortened cache length")
