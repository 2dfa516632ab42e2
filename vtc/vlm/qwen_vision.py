"""Qwen2.5-VL's vision graph, traced from torch at the bundle's static image size: the
tower with its windows, the score of a projector cut, the cut, the patch merger.

    pixel_values[N, 3·2·14·14] ─► patch embed (the Conv3d as one MatMul) ─► window order
        ─► blocks: windowed attention (the windows as a batch) or full attention, both
           with the 2-D rotary positions of the static grid ─► [N, C] (window order)
        ─► raster order, 4 patches per merged token: [N/4, 4C]
        ─► [projector cut (VisionZip) on the merged tokens: score, keys ─► K tokens]
        ─► merger (RMSNorm per patch, MLP) ─► image_features[K, D]
                                               image_positions[K] (raster index, int64)

The windows, the order they put the patches in and the rotary tables depend on the grid
only, so they are constants here (transformers' own ``get_vision_window_index`` and
``get_vision_position_ids`` and the model's rotary module compute them once). A grid
whose windows have unequal sizes attends through a block-diagonal mask instead.

The score (Qwen2.5-VL has no CLS token, the CLS row VisionZip ranks by does not exist):
the attention each merged token receives in the tower's last full-attention block —
that block's softmax averaged over heads and over every query, summed over the token's
4 patches. It is the last layer in which every patch sees the whole image (the windowed
blocks only compare patches of one window), and the closest reading of the reference
code's "attention of the feature layer" for a tower whose features all feed the LLM.
The contextual merge compares that block's keys (before rotary, averaged over heads
and over the 4 patches). Positions: a kept token's own raster index; a contextual
token's is its target's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vtc.methods.cut import TowerOutput, get_cut

from .plan import Cuts
from .qwen2_5_vl import QwenGeometry


def grid_tables(model: nn.Module, geo: QwenGeometry) -> dict[str, Any]:
    """The static tables of the bundle's grid, by transformers' own functions: the window
    order of the merged tokens ``window_index[N/4]``, the window boundaries (patches),
    and the rotary cos/sin ``[N, hd]`` in window order."""
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    visual: Any = model.model.visual  # type: ignore[union-attr]
    thw = torch.tensor([[1, geo.grid_h, geo.grid_w]])
    pos = get_vision_position_ids(thw, geo.merge)
    window_index, cu = get_vision_window_index(thw, geo.merge, geo.window, geo.patch)
    dummy = torch.zeros(1)
    cos, sin = visual.rotary_pos_emb(dummy, pos)
    unit = geo.merge * geo.merge

    def window_order(t: Tensor) -> Tensor:
        return t.reshape(-1, unit, t.shape[-1])[window_index].reshape(t.shape)

    return {"window_index": window_index, "bounds": [int(x) for x in cu.tolist()],
            "cos": window_order(cos.float()), "sin": window_order(sin.float())}


def _rms(norm: nn.Module, x: Tensor) -> Tensor:
    n: Any = norm
    var = x.pow(2).mean(-1, keepdim=True)
    return n.weight * (x * torch.rsqrt(var + n.variance_epsilon))  # type: ignore[no-any-return]


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rot * sin


class QwenVision(nn.Module):
    """``pixel_values[N, 3·T·p·p]`` → ``image_features[K, D]``, ``image_positions[K]``
    (module docstring); `cuts` with a projector cut, or uncut (K = N/4)."""

    cos: Tensor
    sin: Tensor
    order: Tensor
    back: Tensor
    window_mask: Tensor

    def __init__(self, model: nn.Module, geo: QwenGeometry, cuts: Cuts) -> None:
        super().__init__()
        self.visual: Any = model.model.visual  # type: ignore[union-attr]
        self.geo, self.cuts = geo, cuts
        t = grid_tables(model, geo)
        self.register_buffer("cos", t["cos"][:, None, :], persistent=False)   # [N, 1, hd]
        self.register_buffer("sin", t["sin"][:, None, :], persistent=False)
        self.register_buffer("order", t["window_index"], persistent=False)
        self.register_buffer("back", torch.argsort(t["window_index"]), persistent=False)
        lengths = {b - a for a, b in zip(t["bounds"], t["bounds"][1:], strict=False)}
        self.window_len = lengths.pop() if len(lengths) == 1 else 0
        n = geo.patches
        mask = torch.full((n, n), torch.finfo(torch.float32).min)
        for a, b in zip(t["bounds"], t["bounds"][1:], strict=False):
            mask[a:b, a:b] = 0.0
        self.register_buffer("window_mask", mask, persistent=False)

    def _attention(self, blk: Any, x: Tensor, full: bool
                   ) -> tuple[Tensor, Tensor | None, Tensor]:
        """One block's attention on ``x[N, C]`` → (output ``[N, C]``, probabilities
        ``[H, N, N]`` of a full block or None, keys before rotary ``[N, H, hd]``)."""
        n, c = x.shape
        h = self.geo.vision_heads
        qkv = blk.attn.qkv(x).reshape(n, 3, h, c // h)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        qr, kr = _rotate(q, self.cos, self.sin), _rotate(k, self.cos, self.sin)
        scale = blk.attn.scaling
        if full or not self.window_len:
            logits = torch.einsum("nhd,mhd->hnm", qr, kr) * scale
            if not full:
                logits = logits + self.window_mask
            probs = logits.softmax(dim=-1)
            out = torch.einsum("hnm,mhd->nhd", probs, v).reshape(n, c)
            return blk.attn.proj(out), probs if full else None, k
        w = self.window_len  # windows of equal length: a batch of windows
        qw, kw, vw = (t.reshape(n // w, w, h, c // h).transpose(1, 2) for t in (qr, kr, v))
        probs = ((qw @ kw.transpose(-1, -2)) * scale).softmax(dim=-1)
        out = (probs @ vw).transpose(1, 2).reshape(n, c)
        return blk.attn.proj(out), None, k

    def tower(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """→ the last block's output ``[N, C]``, the score layer's probabilities
        ``[H, N, N]`` and keys ``[N, H, hd]``, all in window order."""
        pe = self.visual.patch_embed.proj.weight
        x = pixel_values @ pe.reshape(pe.shape[0], -1).t()
        unit = self.geo.merge * self.geo.merge
        x = x.reshape(-1, unit, x.shape[-1])[self.order].reshape(x.shape)
        probs = keys = None
        for i, blk in enumerate(self.visual.blocks):
            full = i in self.geo.fullatt
            out, p, k = self._attention(blk, _rms(blk.norm1, x), full)
            if i == self.geo.score_layer:
                probs, keys = p, k
            x = x + out
            x = x + blk.mlp(_rms(blk.norm2, x))
        assert probs is not None and keys is not None
        return x, probs, keys

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        x, probs, keys = self.tower(pixel_values)
        return to_lm(self.visual.merger, self.geo, self.cuts, merged_output(
            x, probs, keys, self.back, self.geo.merge * self.geo.merge))


def merged_output(x: Tensor, probs: Tensor, keys: Tensor, back: Tensor, unit: int
                  ) -> TowerOutput:
    """Window-order patches → one row per merged token in raster order (`TowerOutput`):
    features ``[1, N', unit·C]``; score ``[1, N']`` the attention each merged token
    receives (probabilities ``[H, N, N]`` averaged over heads and queries, summed over
    its `unit` patches); keys ``[1, N', hd]`` (``[N, H, hd]`` averaged over heads and
    patches). `back` ``[N']`` puts the merged rows from window to raster order."""
    n, c = x.shape
    feats = x.reshape(n // unit, unit * c)[back]
    received = probs.mean(dim=0).mean(dim=0)                               # [N]
    score = received.reshape(n // unit, unit).sum(dim=-1)[back]
    k = keys.mean(dim=1).reshape(n // unit, unit, -1).mean(dim=1)[back]
    return TowerOutput(feats[None], score[None], k[None], protected=0)


def to_lm(merger: nn.Module, geo: QwenGeometry, cuts: Cuts, out: TowerOutput
          ) -> tuple[Tensor, Tensor]:
    """The merged tokens → (``image_features[K, D]``, ``image_positions[K]``): the
    projector cut by its method's `tower` op, then the merger (its RMSNorm reads each
    patch of a merged row)."""
    step = cuts.projector
    feats = out.features
    if step is not None:
        feats, idx = get_cut(step.method).tower(step, out)
    else:
        idx = torch.arange(feats.shape[1])[None]
    m: Any = merger
    rows = feats[0]
    c = geo.vision_width
    normed = m.ln_q(rows.reshape(-1, c)).reshape(rows.shape[0], -1)
    return m.mlp(normed), idx[0]
