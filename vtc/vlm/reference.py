"""The eager reference: the Hugging Face LLaVA model, driven module by module, with
the same cuts as the engines.

Independent of `vtc.vlm.modules` where it matters: the tower runs as HF's
``CLIPVisionModel`` (its hidden states and attention probabilities), the language
model as HF's own ``LlamaDecoderLayer``s with HF's attention, rotary application and
``DynamicCache`` (one cache per layer, so a FastV cut leaves the later layers' caches
shorter, as in the engines). The cuts call their methods' torch ops through the cut interface
(`VisualCut.tower` — VisionZip's `select` —, `VisualCut.keep` — FastV's, PyramidDrop's
and the visual-token exit's selection, on the attention `VisualCut.lm_stage` names),
whose own tests hold them to independent implementations of the published code. A
tower with encoder cuts (tome, evit) runs through vtc's block loop instead
(`VisionEncoder.features`), as the encoder reference does.

Shapes: ``ids`` a list of token ids with one image token; ``image_embeds[1, K, D]``;
``embeds[1, S, D]``; logits ``[1, vocab]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vtc.methods.cut import get_cut

from .llava import VlmGeometry
from .modules import VisionEncoder, to_lm
from .plan import Cuts

if TYPE_CHECKING:
    from vtc.passes.decoder_cuts import CutStage


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


def own_probs(lm: Any, layer: nn.Module, h: Tensor, pos: Tensor) -> Tensor:
    """Layer `layer`'s attention probabilities for the last query, ``[B, H, 1, S]``, from
    its own input norm and query/key projections of `h` ``[B, S, D]`` with rotary at
    `pos` ``[B, S]`` (causal: the last query sees every key; fp32 softmax): what a cut
    that ranks with the layer it is about to run reads (PyramidDrop)."""
    import sys

    lay: Any = layer
    att = lay.self_attn
    rope = sys.modules[type(att).__module__].apply_rotary_pos_emb
    x = lay.input_layernorm(h)
    b, s, _ = x.shape
    q = att.q_proj(x).view(b, s, -1, att.head_dim).transpose(1, 2)
    k = att.k_proj(x).view(b, s, -1, att.head_dim).transpose(1, 2)
    cos, sin = lm.rotary_emb(x, pos)
    q, k = rope(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q[:, :, -1:] @ k.transpose(-1, -2)) * att.scaling
    return logits.float().softmax(dim=-1)


class LmCuts:
    """The LM cuts of `cuts` by the layer they act before, for an eager reference that
    drives HF's decoder layers (LLaVA's and Qwen2.5-VL's). Used as a context manager:
    while open, a forward hook holds layer L-1's attention probabilities for each cut
    whose stage scores on `previous` (as HF's layer returns them)."""

    def __init__(self, lm: Any, cuts: Cuts) -> None:
        self.lm = lm
        self.steps = {int(st.layer or 0): (st, get_cut(st.method)) for st in cuts.lm_steps}
        self.stages = {at: cut.lm_stage(st) for at, (st, cut) in self.steps.items()}
        self.seen: dict[int, Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> LmCuts:
        for at, stage in self.stages.items():
            if stage.score == "previous":
                def grab(_mod: nn.Module, _inp: Any, out: Any, at: int = at) -> None:
                    self.seen[at] = out[1]  # layer at - 1's probabilities, read at layer at
                self._hooks.append(self.lm.layers[at - 1].self_attn.register_forward_hook(grab))
        return self

    def __exit__(self, *_exc: object) -> None:
        for hook in self._hooks:
            hook.remove()

    def keep(self, at: int, layer: nn.Module, h: Tensor, pos: Tensor, image_start: int
             ) -> tuple[Tensor, CutStage]:
        """The cut before layer `at` on hidden states `h` [1, S, D] at positions `pos`:
        the kept rows' indices [K] by its method's `keep` on the attention its stage
        names (layer at-1's held, layer at's own, or none), and the stage."""
        (st, cut), stage = self.steps[at], self.stages[at]
        probs = (self.seen[at] if stage.score == "previous" else
                 own_probs(self.lm, layer, h, pos) if stage.score == "own" else
                 torch.zeros(h.shape[0], 1, 1, h.shape[1]))
        return cut.keep(st, probs, image_start)[0], stage


def generate(model: nn.Module, geo: VlmGeometry, cuts: Cuts, embeds: Tensor, image_start: int,
             max_new: int, eos: set[int]) -> Greedy:
    """Greedy decoding through HF's decoder layers with the LM cuts, each by its method's
    `keep` on the attention its stage names (`VisualCut.lm_stage`: layer L-1's as HF's
    layer returns it, layer L's own before it runs, or none); the kept tokens keep their
    positions or are renumbered as the stage says, and decoding runs each layer at the
    position after the last one it saw (module docstring)."""
    from transformers import DynamicCache

    m: Any = model
    lm = m.model.language_model
    cache = DynamicCache(config=lm.config)
    nxt_pos: list[int] = []  # per layer: the position of the first decoded token
    with LmCuts(lm, cuts) as lm_cuts:
        with torch.no_grad():
            h, s = embeds, embeds.shape[1]
            pos = torch.arange(s)[None]
            for i, layer in enumerate(lm.layers):
                if i in lm_cuts.steps:  # an LM cut: its method's own selection
                    idx, stage = lm_cuts.keep(i, layer, h, pos, image_start)
                    h = h[:, idx]
                    pos = pos[:, idx] if stage.positions == "keep" else \
                        torch.arange(len(idx))[None]
                nxt_pos.append(int(pos[0, -1]) + 1)
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
                for layer, at in zip(lm.layers, nxt_pos, strict=True):
                    p = torch.tensor([[at + t]])
                    h = layer(h, attention_mask=None, position_ids=p, cache=cache,
                              use_cache=True, position_embeddings=lm.rotary_emb(h, p))
                logits = m.lm_head(lm.norm(h[:, -1]))
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
