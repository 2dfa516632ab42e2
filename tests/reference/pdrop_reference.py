"""Independent reference implementation of PyramidDrop's inference forward, for a
Hugging Face Llama language model (transformers 5 modules).

This module is a test oracle. It re-implements, from the published algorithm and the
authors' reference code (Xing et al., 2024, "PyramidDrop: Accelerating Your Large
Vision-Language Models via Pyramid Visual Redundancy Reduction";
github.com/Cooperx521/PyramidDrop ``llava/model/modeling_llama_pdrop.py``:
``pdrop_forward`` and ``pdrop_rank_drop``, the inference branch), the language model's
forward pass with PyramidDrop, without a KV cache. It imports nothing from ``vtc``.

The reference, per forward over a sequence longer than one token::

    for layer_idx, layer in enumerate(layers):
        h = layer(h, causal mask, position_ids)
        rank_layer = layer_idx + 1
        if rank_layer in layer_list:                        # stage s = its index
            x = layers[rank_layer].input_layernorm(h)
            q, k = q_proj(x), k_proj(x), rotary at position_ids
            a = softmax_fp32(q[last prompt token] · kᵀ / sqrt(hd) + causal mask)
            score = a.mean(heads)[image_start : image_start + int(V · ratio[s])]
            keep = topk(score, int(V · ratio[s + 1])).indices.sort()
            h = cat(h[:image_start], h[image_start + keep], h[image_start + n_image:])
            position_ids = arange(len(h))                   # renumbered

``ratio`` is the authors' ``image_token_ratio_list`` (``[1.0, r_1, …]``); V the image's
tokens before the first stage; "the last prompt token" is index ``prompt_len + n_image
- 1`` (``prompt_total_len - 1``), which stays the query when generated tokens follow:
so greedy decoding without a cache (the whole sequence again at each step) is the
reference's own no-cache path.

One deviation, stated: the reference multiplies query heads by key heads one to one
(its models have as many key/value heads as heads). For grouped-query attention this
oracle repeats each key head over its group (``repeat_kv``), as the attention itself
does.

Shapes: ``embeds[1, S, D]`` (the prompt with the image's V embeddings spliced in at
``image_start``); logits ``[vocab]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["pdrop_greedy", "pdrop_logits"]


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x ``[B, H, S, hd]``; cos/sin ``[B, S, hd]`` (HF's rotary_emb output)."""
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


def _causal(s: int) -> Tensor:
    m = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)
    return m[None, None]


def _rank_keep(lm: Any, rank_layer: int, h: Tensor, pos: Tensor, query: int,
               image_start: int, n_image: int, keep: int) -> Tensor:
    """pdrop_rank_drop's ranking: the kept image offsets (ascending) among ``n_image``."""
    layer = lm.layers[rank_layer]
    att = layer.self_attn
    x = layer.input_layernorm(h)
    b, s, _ = x.shape
    hd = att.head_dim
    q = att.q_proj(x).view(b, s, -1, hd).transpose(1, 2)
    k = att.k_proj(x).view(b, s, -1, hd).transpose(1, 2)
    cos, sin = lm.rotary_emb(x, pos)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # repeat_kv (the deviation)
    w = q[0, :, query:query + 1] @ k[0].transpose(1, 2) / math.sqrt(hd)  # [H, 1, S]
    w = w + _causal(s)[0, :, query:query + 1]
    w = torch.softmax(w, dim=-1, dtype=torch.float32)
    score = w.mean(dim=0)[:, image_start:image_start + n_image].mean(dim=0)  # [n_image]
    return score.topk(keep).indices.sort().values


def _forward(lm: Any, head: Any, embeds: Tensor, image_start: int, n_image: int,
             prompt_len: int, layer_list: list[int], ratios: list[float]) -> Tensor:
    """The last position's logits ``[vocab]`` of one no-cache forward with PyramidDrop.
    prompt_len: the prompt's text tokens (the query is ``prompt_len + n_image - 1``)."""
    v0 = n_image
    h = embeds
    pos = torch.arange(h.shape[1])[None]
    for layer_idx, layer in enumerate(lm.layers):
        h = layer(h, attention_mask=_causal(h.shape[1]), position_ids=pos,
                  position_embeddings=lm.rotary_emb(h, pos))
        rank_layer = layer_idx + 1
        if rank_layer in layer_list and h.shape[1] != 1:
            stage = layer_list.index(rank_layer)
            cur, keep = int(v0 * ratios[stage]), int(v0 * ratios[stage + 1])
            top = _rank_keep(lm, rank_layer, h, pos, prompt_len + cur - 1, image_start, cur,
                             keep)
            h = torch.cat([h[:, :image_start], h[:, image_start + top],
                           h[:, image_start + cur:]], dim=1)
            pos = torch.arange(h.shape[1])[None]
    return head(lm.norm(h[:, -1]))[0]  # type: ignore[no-any-return]


def pdrop_logits(model: Any, embeds: Tensor, image_start: int, n_image: int,
                 layer_list: list[int], ratios: list[float]) -> Tensor:
    """First-step logits ``[vocab]`` of a LLaVA-style model (``model.model.language_model``
    and ``model.lm_head``) with PyramidDrop; ratios ``[1.0, r_1, …, r_n]``."""
    prompt_len = embeds.shape[1] - n_image
    with torch.no_grad():
        return _forward(model.model.language_model, model.lm_head, embeds, image_start,
                        n_image, prompt_len, layer_list, ratios)


def pdrop_greedy(model: Any, embeds: Tensor, image_start: int, n_image: int,
                 layer_list: list[int], ratios: list[float], max_new: int) -> list[int]:
    """Greedy tokens by the reference's no-cache path: the whole sequence again at each
    step, the prompt's last token staying the ranking query."""
    lm, head = model.model.language_model, model.lm_head
    emb = model.get_input_embeddings()
    prompt_len = embeds.shape[1] - n_image
    tokens: list[int] = []
    x = embeds
    with torch.no_grad():
        for _ in range(max_new):
            logits = _forward(lm, head, x, image_start, n_image, prompt_len, layer_list,
                              ratios)
            tokens.append(int(logits.argmax()))
            x = torch.cat([x, emb(torch.tensor([[tokens[-1]]]))], dim=1)
    return tokens
