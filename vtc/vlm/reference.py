"""The eager reference: the Hugging Face LLaVA model, driven module by module, with
the same cuts as the engines.

Independent of `vtc.vlm.modules` where it matters: the tower runs as HF's
``CLIPVisionModel`` (its hidden states and attention probabilities), the language
model as HF's own ``LlamaDecoderLayer``s with HF's attention, rotary application and
``DynamicCache`` (one cache per layer, so a FastV cut leaves the later layers' caches
shorter, as in the engines). The cuts call their methods' torch ops through the cut interface
(`VisualCut.tower` — VisionZip's `select` —, `VisualCut.keep` — FastV's
`keep_indices`), whose own tests hold them to independent implementations of the
published code. A tower with encoder cuts (tome, evit) runs through vtc's block
loop instead (`VisionEncoder.features`), as the encoder reference does.

Shapes: ``ids`` a list of token ids with one image token; ``image_embeds[1, K, D]``;
``embeds[1, S, D]``; logits ``[1, vocab]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vtc.methods.cut import get_cut

from .llava import VlmGeometry
from .modules import VisionEncoder, to_lm
from .plan import Cuts


@dataclass
class Greedy:
    """Greedy decoding: the new tokens and the first step's logits ``[vocab]``."""

    tokens: list[int]
    first_logits: Tensor


def image_embeds(model: nn.Module, geo: VlmGeometry, cuts: Cuts, pixel_values: Tensor) -> Tensor:
    """``pixel_values[B, 3, H, W]`` → ``[B, K, D]`` with the bundle's cuts."""
    m: Any = model
    with torch.no_grad():
        if cuts.encoder is not None and cuts.encoder.reducing_layers:
            x, probs, keys = VisionEncoder(model, geo, cuts).features(pixel_values)
        else:
            tower = m.model.vision_tower
            out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
            f = geo.feature_layer
            x, probs = out.hidden_states[f + 1], out.attentions[f]
            layer = tower.encoder.layers[f]
            k = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[f]))
            keys = k.view(*k.shape[:2], geo.vision_heads, -1).mean(dim=2)
        return to_lm(m.model.multi_modal_projector, geo, cuts, x, probs, keys)


def splice(model: nn.Module, ids: list[int], image_token: int,
           images: Tensor) -> tuple[Tensor, int]:
    """Token embeddings with the image's K embeddings in place of its one image token:
    ``[1, S, D]`` and the image's first position."""
    at = ids.index(image_token)
    emb: Any = model.get_input_embeddings()  # type: ignore[operator]
    with torch.no_grad():
        before = emb(torch.tensor([ids[:at]], dtype=torch.long))
        after = emb(torch.tensor([ids[at + 1:]], dtype=torch.long))
    return torch.cat([before, images, after], dim=1), at


def _causal(s: int) -> Tensor:
    allowed = torch.ones(s, s, dtype=torch.bool).tril()
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]


def generate(model: nn.Module, geo: VlmGeometry, cuts: Cuts, embeds: Tensor, image_start: int,
             max_new: int, eos: set[int]) -> Greedy:
    """Greedy decoding through HF's decoder layers with the LM cuts (FastV), each by its
    method's `keep` on the attention HF's layer before it returns (module docstring)."""
    from transformers import DynamicCache

    m: Any = model
    lm = m.model.language_model
    cache = DynamicCache(config=lm.config)
    steps = {st.layer: st for st in cuts.lm_steps}
    seen: dict[int, Tensor] = {}
    hooks = []
    for at in steps:
        assert at is not None
        def grab(_mod: nn.Module, _inp: Any, out: Any, at: int = at) -> None:
            seen[at] = out[1]  # the probabilities of layer at - 1, read at layer at
        hooks.append(lm.layers[at - 1].self_attn.register_forward_hook(grab))
    try:
        with torch.no_grad():
            h, s = embeds, embeds.shape[1]
            pos = torch.arange(s)[None]
            for i, layer in enumerate(lm.layers):
                if i in steps:  # an LM cut: its method's own selection
                    st = steps[i]
                    idx = get_cut(st.method).keep(st, seen[i], image_start)[0]
                    h, pos = h[:, idx], pos[:, idx]
                h = layer(h, attention_mask=_causal(h.shape[1]), position_ids=pos, cache=cache,
                          use_cache=True, position_embeddings=lm.rotary_emb(h, pos))
            logits = m.lm_head(lm.norm(h[:, -1]))
            first = logits[0].clone()
            tokens: list[int] = []
            for t in range(max_new):
                nxt = int(logits[0].argmax())
                tokens.append(nxt)
                if nxt in eos or t == max_new - 1:
                    break
                h = m.get_input_embeddings()(torch.tensor([[nxt]]))
                pos = torch.tensor([[s + t]])
                emb = lm.rotary_emb(h, pos)
                for layer in lm.layers:
                    h = layer(h, attention_mask=None, position_ids=pos, cache=cache,
                              use_cache=True, position_embeddings=emb)
                logits = m.lm_head(lm.norm(h[:, -1]))
    finally:
        for hook in hooks:
            hook.remove()
    return Greedy(tokens, first)


def generate_from_ids(model: nn.Module, geo: VlmGeometry, cuts: Cuts, ids: list[int],
                      pixel_values: Tensor, max_new: int, eos: set[int]) -> Greedy:
    """`generate` on the prompt `ids` (one image token) and the image: the image's
    embeddings with the cuts spliced in at the image token."""
    emb, at = splice(model, ids, geo.image_token_id,
                     image_embeds(model, geo, cuts, pixel_values))
    return generate(model, geo, cuts, emb, at, max_new, eos)


def hf_generate(model: nn.Module, geo: VlmGeometry, ids: list[int], pixel_values: Tensor,
                max_new: int, eos: set[int]) -> Greedy:
    """The uncut model through HF's own ``generate`` (greedy) and forward: the fidelity
    baseline. The one image token is expanded to the V tokens HF's LLaVA expects."""
    m: Any = model
    at = ids.index(geo.image_token_id)
    full = ids[:at] + [geo.image_token_id] * geo.visual + ids[at + 1:]
    input_ids = torch.tensor([full])
    with torch.no_grad():
        first = m(input_ids=input_ids, pixel_values=pixel_values).logits[0, -1].clone()
        out = m.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=max_new,
                         do_sample=False, eos_token_id=sorted(eos), pad_token_id=0,
                         attention_mask=torch.ones_like(input_ids))
    tokens = [int(t) for t in out[0, len(full):]]
    return Greedy(tokens, first)
