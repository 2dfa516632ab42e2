"""vtc's exportable LLaVA modules: the graphs of a VLM bundle, traced from torch.

Each module reads the Hugging Face model's weights and submodules (linear layers,
norms, MLPs, rotary frequencies) but writes the attention, the key/value cache and the
cuts itself, with static shapes where the budget fixes them:

* `VisionEncoder`: ``pixel_values[B, 3, H, W]`` → ``image_embeds[B, K, D]``: the CLIP
  tower up to its feature layer F (encoder cuts — tome, evit — by their eager ops in
  blocks 0..F-1), the feature selection (``default`` drops CLS), VisionZip when the
  recipe has it, the projector.
* `Embed`: ``input_ids[B, S]`` → ``inputs_embeds[B, S, D]``.
* `Prefill`: ``inputs_embeds[B, P, D]``, ``attention_mask[B, P]`` (0 on left padding),
  ``position_ids[B, P]`` (+ ``image_start[B]`` with FastV) → ``logits[B, vocab]`` of the
  last position and ``present.N.key/value[B, Hkv, P_N, hd]`` (P_N = P, or P - V + R from
  FastV's layer on).
* `Decode`: one token, ``attention_mask[B, T + 1]`` over the uncut positions,
  ``past_key_values.N.key/value[B, Hkv, T_N, hd]`` → logits and the grown cache. A layer
  behind a FastV cut holds a shorter cache; its mask is the first T_N + 1 entries of the
  full one (left padding: zeros, then ones, so dropping visual ones equals truncating).

Before/after (prefill, FastV at L)::

    embeds ─► L_0 … L_{L-1} ─► h[B,P,D] ─────────────────────────► L_L … ─► norm ─► lm_head
                       └ probs[B,H,P,P] ─► last row ─► keep_indices ─► Gather(h, cos/sin, mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vtc import methods
from vtc.budget import NONE, Budget
from vtc.exporter.clip import encoder_blocks
from vtc.exporter.eager import attention as vit_attention
from vtc.methods.fastv import keep_indices
from vtc.methods.visionzip import select

from .llava import VlmGeometry


@dataclass(frozen=True)
class Cuts:
    """The static budget of one LLaVA bundle.

    encoder: the budget of tower blocks 0..F-1 (None: uncut); visionzip: (dominant,
    contextual) or None; fastv: (layer L, kept R) or None; visual: tokens per image
    the LM reads (after VisionZip); prefill: the static prefill length P."""

    encoder: Budget | None
    visionzip: tuple[int, int] | None
    fastv: tuple[int, int] | None
    visual: int
    prefill: int

    @property
    def lm_tokens(self) -> int:
        """Tokens the LM layers past the FastV cut read, at a full prefill."""
        return self.prefill if self.fastv is None else self.prefill - self.visual + self.fastv[1]


class VisionEncoder(nn.Module):
    """``pixel_values[B, 3, H, W]`` → ``image_embeds[B, K, D]`` (module docstring)."""

    def __init__(self, model: nn.Module, geo: VlmGeometry, cuts: Cuts) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower
        self.projector = m.model.multi_modal_projector
        self.parts = encoder_blocks(self.tower)[: geo.feature_layer + 1]
        self.geo, self.cuts = geo, cuts

    def features(self, pixel_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer F's output ``[B, T', C]``, its probabilities ``[B, H, T', T']`` and
        keys averaged over heads ``[B, T', hd]`` (T' after the encoder cuts)."""
        x = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        budget = self.cuts.encoder
        sizes: Tensor | None = None
        *body, last = self.parts
        for i, parts in enumerate(body):
            plan = budget.layers[i] if budget is not None else None
            log_s = sizes.log() if sizes is not None and plan is not None and plan.attn_bias \
                else None
            out, keys, probs = vit_attention(parts, parts.norm1(x), log_s)
            x = x + out
            if plan is not None and plan.method != NONE:
                x, sizes = methods.get(plan.method).eager(x, sizes, keys, probs, plan,
                                                          budget.protected)  # type: ignore[union-attr]
            x = x + parts.mlp(parts.norm2(x))
        bias = budget is not None and sizes is not None and any(
            lp.attn_bias for lp in budget.layers)
        out, keys, probs = vit_attention(last, last.norm1(x), sizes.log() if bias and
                                         sizes is not None else None)
        x = x + out
        x = x + last.mlp(last.norm2(x))
        return x, probs, keys.mean(dim=1)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return to_lm(self.projector, self.geo, self.cuts, *self.features(pixel_values))


def to_lm(projector: nn.Module, geo: VlmGeometry, cuts: Cuts, x: Tensor, probs: Tensor,
          keys: Tensor) -> Tensor:
    """Layer F's output ``[B, T', C]`` (its probabilities and head-averaged keys for
    VisionZip) → the LM's visual tokens ``[B, K, D]``: VisionZip, or the strategy's
    selection (``default`` drops CLS), then the projector."""
    if cuts.visionzip is not None:
        x = select(x, probs, keys, *cuts.visionzip)
    elif geo.strategy == "default":
        x = x[:, 1:]
    return projector(x)  # type: ignore[no-any-return]


class TowerBody(nn.Module):
    """``pixel_values[B, 3, H, W]`` → ``hidden[B, T, C]`` after tower blocks 0..F-1, uncut:
    the graph the encoder passes (tome, evit) rewrite, as they rewrite any encoder."""

    def __init__(self, model: nn.Module, geo: VlmGeometry) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower
        self.parts = encoder_blocks(self.tower)[: geo.feature_layer]

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        for parts in self.parts:
            x = x + vit_attention(parts, parts.norm1(x), None)[0]
            x = x + parts.mlp(parts.norm2(x))
        return x  # type: ignore[no-any-return]


class TowerTail(nn.Module):
    """``hidden[B, T', C]`` (+ ``token_sizes[B, T']`` after a merge with proportional
    attention) → ``image_embeds[B, K, D]``: layer F, the feature selection, VisionZip,
    the projector. Joined to the rewritten `TowerBody` into one vision graph."""

    def __init__(self, model: nn.Module, geo: VlmGeometry, cuts: Cuts, bias: bool) -> None:
        super().__init__()
        m: Any = model
        self.tower = m.model.vision_tower  # registers the parameters BlockParts points at
        self.last = encoder_blocks(self.tower)[geo.feature_layer]
        self.projector = m.model.multi_modal_projector
        self.geo, self.cuts, self.bias = geo, cuts, bias

    def forward(self, hidden: Tensor, token_sizes: Tensor | None = None) -> Tensor:
        last, x = self.last, hidden
        log_s = token_sizes[..., None].log() if self.bias and token_sizes is not None else None
        out, keys, probs = vit_attention(last, last.norm1(x), log_s)
        x = x + out
        x = x + last.mlp(last.norm2(x))
        return to_lm(self.projector, self.geo, self.cuts, x, probs, keys.mean(dim=1))


class Embed(nn.Module):
    """``input_ids[B, S]`` → ``inputs_embeds[B, S, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.table = model.get_input_embeddings()  # type: ignore[operator]

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.table(input_ids)  # type: ignore[no-any-return]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _additive(allowed: Tensor) -> Tensor:
    """bool mask → 0 where allowed, the float32 minimum elsewhere (a fully masked row —
    a padding query — gets a uniform softmax instead of NaN; its output is never read)."""
    return torch.where(allowed, torch.zeros((), dtype=torch.float32),
                       torch.full((), torch.finfo(torch.float32).min))


class _Lm(nn.Module):
    """The language model's layers with vtc's attention (shared by prefill and decode)."""

    def __init__(self, model: nn.Module, geo: VlmGeometry) -> None:
        super().__init__()
        m: Any = model
        self.lm = m.model.language_model
        self.head = m.lm_head
        self.geo = geo

    def layer(self, i: int, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
              past: tuple[Tensor, Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One decoder layer: h ``[B, S, D]``, cos/sin ``[B, S, hd]``, additive mask
        ``[B, 1, S, T]`` → (h, key, value ``[B, Hkv, T, hd]`` with the past, the last
        query's probabilities averaged over heads ``[B, T]``)."""
        g, layer = self.geo, self.lm.layers[i]
        att = layer.self_attn
        b, s, _ = h.shape
        x = layer.input_layernorm(h)
        q = att.q_proj(x).view(b, s, g.lm_heads, g.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(b, s, g.kv_heads, g.head_dim).transpose(1, 2)
        v = att.v_proj(x).view(b, s, g.kv_heads, g.head_dim).transpose(1, 2)
        c, sn = cos[:, None], sin[:, None]
        q = q * c + _rotate_half(q) * sn
        k = k * c + _rotate_half(k) * sn
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        rep = g.lm_heads // g.kv_heads
        kk = k.repeat_interleave(rep, dim=1) if rep > 1 else k
        vv = v.repeat_interleave(rep, dim=1) if rep > 1 else v
        probs = ((q @ kk.transpose(-1, -2)) * att.scaling + mask).softmax(dim=-1)
        out = (probs @ vv).transpose(1, 2).reshape(b, s, -1)
        h = h + att.o_proj(out)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, k, v, probs[:, :, -1].mean(dim=1)

    def logits(self, h: Tensor) -> Tensor:
        """Last position's logits ``[B, vocab]``."""
        return self.head(self.lm.norm(h[:, -1]))  # type: ignore[no-any-return]


def _gather_seq(x: Tensor, idx: Tensor) -> Tensor:
    """``x[B, S, ...]`` at ``idx[B, S']`` along the sequence."""
    shape = (*idx.shape, *x.shape[2:])
    full = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, full)


class Prefill(_Lm):
    """The prompt at once (module docstring); FastV cuts after layer L."""

    def __init__(self, model: nn.Module, geo: VlmGeometry, cuts: Cuts) -> None:
        super().__init__(model, geo)
        self.cuts = cuts

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                image_start: Tensor | None = None) -> tuple[Tensor, ...]:
        h = inputs_embeds
        cos, sin = self.lm.rotary_emb(h, position_ids)
        keep = attention_mask > 0
        fastv = self.cuts.fastv
        presents: list[Tensor] = []
        last_row = None
        for i in range(self.geo.lm_layers):
            if fastv is not None and i == fastv[0]:
                assert image_start is not None and last_row is not None
                pos = torch.arange(h.shape[1], device=h.device)[None, :]
                start = image_start[:, None]
                visual = (pos >= start) & (pos < start + self.cuts.visual)
                idx = keep_indices(last_row, visual, self.cuts.visual, fastv[1])
                h, cos, sin = _gather_seq(h, idx), _gather_seq(cos, idx), _gather_seq(sin, idx)
                keep = torch.gather(keep, 1, idx)
            s = h.shape[1]
            causal = torch.ones(s, s, dtype=torch.bool, device=h.device).tril()
            mask = _additive(causal[None, None] & keep[:, None, None, :])
            h, k, v, last_row = self.layer(i, h, cos, sin, mask)
            presents += [k, v]
        return (self.logits(h), *presents)


class Decode(_Lm):
    """One new token against the cache (module docstring)."""

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                *past: Tensor) -> tuple[Tensor, ...]:
        h = inputs_embeds
        cos, sin = self.lm.rotary_emb(h, position_ids)
        presents: list[Tensor] = []
        for i in range(self.geo.lm_layers):
            pk, pv = past[2 * i], past[2 * i + 1]
            allowed = attention_mask[:, : pk.shape[2] + 1] > 0
            mask = _additive(allowed[:, None, None, :])
            h, k, v, _ = self.layer(i, h, cos, sin, mask, (pk, pv))
            presents += [k, v]
        return (self.logits(h), *presents)
