"""The eager reference of a Qwen2.5-VL bundle: Hugging Face's modules, driven with the
same cuts as the engines, independent of `vtc.vlm.qwen_vision` where it matters.

* the tower runs as HF's ``Qwen2_5_VisionTransformerPretrainedModel`` (its own windows,
  in its own per-window loop); the score layer's probabilities are recomputed from that
  block's input, its own q/k projection and HF's ``apply_rotary_pos_emb_vision``;
  the projector cut is its method's torch op through the cut interface
  (`VisualCut.tower`), the merger HF's own module;
* the positions are HF's ``get_rope_index`` for the uncut prompt; the kept visual
  tokens take theirs, the text after the image keeps its own, decoding continues one
  past the largest (HF's ``rope_deltas``);
* the language model runs as HF's ``Qwen2_5_VLDecoderLayer``s with HF's M-RoPE and a
  ``DynamicCache`` (one cache per layer, so an LM cut leaves the later layers' caches
  shorter, as in the engines); an LM cut is its method's `keep` on the attention its
  stage names (`VisualCut.lm_stage`: layer L-1's as HF's layer returns it, or layer L's
  own projections before it runs, or none), and the kept tokens keep their 3-D
  positions.

Shapes: ``ids`` a list of token ids with one image token; ``pixel_values[N, 1176]``;
image features ``[K, D]``; logits ``[vocab]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .plan import Cuts
from .qwen2_5_vl import QwenGeometry
from .qwen_vision import merged_output, to_lm
from .reference import Greedy, LmCuts, _causal


def _thw(geo: QwenGeometry) -> Tensor:
    return torch.tensor([[1, geo.grid_h, geo.grid_w]])


def image_features(model: nn.Module, geo: QwenGeometry, cuts: Cuts, pixel_values: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """``pixel_values[N, 1176]`` → (``[K, D]``, the raster index of each token ``[K]``)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    m: Any = model
    visual = m.model.visual
    seen: dict[str, Any] = {}

    def grab(_mod: nn.Module, args: Any, kwargs: Any) -> None:
        seen["x"], seen["pe"] = args[0], kwargs["position_embeddings"]

    hook = visual.blocks[geo.score_layer].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = visual(pixel_values, grid_thw=_thw(geo))
            blk = visual.blocks[geo.score_layer]
            n = seen["x"].shape[0]
            qkv = blk.attn.qkv(blk.norm1(seen["x"])).reshape(n, 3, geo.vision_heads, -1)
            q, k, _ = qkv.permute(1, 0, 2, 3).unbind(0)
            qr, kr = apply_rotary_pos_emb_vision(q, k, *seen["pe"])
            probs = (torch.einsum("nhd,mhd->hnm", qr, kr) * blk.attn.scaling).softmax(-1)
            window, _ = get_vision_window_index(_thw(geo), geo.merge, geo.window, geo.patch)
            tower = merged_output(out.last_hidden_state, probs, k, torch.argsort(window),
                                  geo.merge * geo.merge)
            return to_lm(visual.merger, geo, cuts, tower)
    finally:
        hook.remove()


def image_embeds(model: nn.Module, geo: QwenGeometry, cuts: Cuts, pixel_values: Tensor
                 ) -> Tensor:
    return image_features(model, geo, cuts, pixel_values)[0]


def _expand(ids: list[int], geo: QwenGeometry, k: int) -> tuple[list[int], int]:
    at = ids.index(geo.image_token_id)
    return ids[:at] + [geo.image_token_id] * k + ids[at + 1:], at


def _rope_index(model: nn.Module, geo: QwenGeometry, full: list[int]) -> Tensor:
    """HF's 3-D positions ``[3, 1, S]`` of the uncut prompt."""
    m: Any = model
    input_ids = torch.tensor([full])
    types = (input_ids == geo.image_token_id).int()
    pos, _ = m.model.get_rope_index(input_ids, mm_token_type_ids=types,
                                    image_grid_thw=_thw(geo))
    return pos  # type: ignore[no-any-return]


def generate(model: nn.Module, geo: QwenGeometry, cuts: Cuts, ids: list[int],
             pixel_values: Tensor, max_new: int, eos: set[int]) -> Greedy:
    """Greedy decoding with the bundle's cuts (module docstring)."""
    from transformers import DynamicCache

    m: Any = model
    lm = m.model.language_model
    feats, kept = image_features(model, geo, cuts, pixel_values)
    full, at = _expand(ids, geo, geo.visual)
    pos_full = _rope_index(model, geo, full)
    cut_ids, _ = _expand(ids, geo, feats.shape[0])
    keep = torch.cat([torch.arange(at), at + kept, torch.arange(at + geo.visual, len(full))])
    pos = pos_full[:, :, keep]
    emb = m.get_input_embeddings()
    with torch.no_grad():
        h = emb(torch.tensor([cut_ids]))
        h[0, at:at + feats.shape[0]] = feats
    nxt_pos = int(pos_full.max()) + 1
    cache = DynamicCache(config=lm.config)
    with LmCuts(lm, cuts) as lm_cuts:
        with torch.no_grad():
            for i, layer in enumerate(lm.layers):
                if i in lm_cuts.steps:  # an LM cut: its method's own selection
                    idx, _ = lm_cuts.keep(i, layer, h, pos, at)
                    # kept tokens keep their 3-D positions (plan refuses a renumbering)
                    h, pos = h[:, idx], pos[:, :, idx]
                h = layer(h, attention_mask=_causal(h.shape[1]), cache=cache, use_cache=True,
                          position_embeddings=lm.rotary_emb(h, pos))
            logits = m.lm_head(lm.norm(h[:, -1]))
            first = logits[0].clone()
            tokens: list[int] = []
            for t in range(max_new):
                token = int(logits[0].argmax())
                tokens.append(token)
                if token in eos or t == max_new - 1:
                    break
                h = emb(torch.tensor([[token]]))
                p = torch.full((3, 1, 1), nxt_pos + t)
                pe = lm.rotary_emb(h, p)
                for layer in lm.layers:
                    h = layer(h, attention_mask=None, cache=cache, use_cache=True,
                              position_embeddings=pe)
                logits = m.lm_head(lm.norm(h[:, -1]))
    return Greedy(tokens, first)


def hf_generate(model: nn.Module, geo: QwenGeometry, ids: list[int], pixel_values: Tensor,
                max_new: int, eos: set[int]) -> Greedy:
    """The uncut model through HF's own forward and ``generate`` (greedy): the fidelity
    baseline."""
    m: Any = model
    full, _ = _expand(ids, geo, geo.visual)
    input_ids = torch.tensor([full])
    extra = {"pixel_values": pixel_values, "image_grid_thw": _thw(geo),
             "mm_token_type_ids": (input_ids == geo.image_token_id).int(),
             "attention_mask": torch.ones_like(input_ids)}
    with torch.no_grad():
        first = m(input_ids=input_ids, **extra).logits[0, -1].clone()
        m.model.rope_deltas = None
        out = m.generate(input_ids=input_ids, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=sorted(eos), pad_token_id=0, **extra)
    tokens = [int(t) for t in out[0, len(full):]]
    return Greedy(tokens, first)
