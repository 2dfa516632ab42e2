"""Greedy generation over a vision-language bundle's three graphs with onnxruntime
sessions (no genai): for bundles whose cuts need an input onnxruntime-genai does not
have (Qwen2.5-VL after a cut before the LLM: the kept tokens' own M-RoPE positions).

    pixel_values ─► vision.onnx ─► image_features[K, D], image_positions[K]
    input_ids (K image tokens) + image_features ─► embedding.onnx ─► inputs_embeds
    inputs_embeds, attention_mask, position_ids[3, 1, S] (`vtc.runtime.mrope.positions`),
        empty past ─► decoder.onnx ─► logits[1, 1, V], present.i.key/value
    then per token: embedding.onnx (no image features) ─► decoder.onnx with the presents
        as the past, the next position, a mask one longer ─► logits

The decoder is the model builder's, as genai runs it, fed by this loop: each layer's
present becomes its past (a layer behind an LM cut holds a shorter cache; its
attention reads the cache length the cut's pass computes, so the loop needs nothing per
layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtc.runtime import mrope


@dataclass
class Decoding:
    """The state between steps: the presents by name, the mask length, the next
    position."""

    past: dict[str, np.ndarray]
    total: int
    position: int
    names: list[str] = field(default_factory=list)


class OrtLoop:
    """Prefill and one-token steps on onnxruntime sessions (module docstring).

    `sessions(name)` gives the session of ``name.onnx``; `config` is generation.json."""

    def __init__(self, sessions: Any, config: dict[str, Any]) -> None:
        self.sessions, self.config = sessions, config
        dec = config["decoder"]
        self.layers, self.kv_heads = int(dec["num_hidden_layers"]), int(dec["num_key_value_heads"])
        self.head_size = int(dec["head_size"])
        self.image_token_id = int(config["image_token_id"])
        d = self.sessions("decoder")
        self.inputs = {i.name: i for i in d.get_inputs()}
        self.dtype = np.float16 if "float16" in self.inputs["inputs_embeds"].type else np.float32
        self.outputs = [o.name for o in d.get_outputs()]

    def vision(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """→ ``image_features`` and the raster index of each visual token ``[K]``."""
        outs = self.sessions("vision").run(None, {"pixel_values": pixel_values})
        feats = outs[0]
        idx = outs[1] if len(outs) > 1 else np.arange(feats.shape[-2])
        return feats, np.asarray(idx, np.int64).reshape(-1)

    def embed(self, ids: np.ndarray, features: np.ndarray) -> np.ndarray:
        return self.sessions("embedding").run(None, {"input_ids": ids,
                                                     "image_features": features})[0]

    def prefill_feeds(self, ids: list[int], pixel_values: np.ndarray
                      ) -> tuple[dict[str, np.ndarray], int]:
        """The decoder's feeds for the prompt `ids` (K image tokens in a row) and the
        position of the first new token."""
        feats, idx = self.vision(pixel_values)
        arr = np.asarray([ids], np.int64)
        feeds = {"inputs_embeds": self.embed(arr, feats),
                 "attention_mask": np.ones(arr.shape, np.int64)}
        nxt = len(ids)
        if "position_ids" in self.inputs:
            start = ids.index(self.image_token_id)
            grid = mrope.grid(self.config["processor"])
            pos, nxt = mrope.positions(len(ids), start, idx, grid)
            feeds["position_ids"] = pos
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), self.dtype)
        for i in range(self.layers):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = empty
        return feeds, nxt

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outs = self.sessions("decoder").run(None, feeds)
        by = dict(zip(self.outputs, outs, strict=True))
        past = {n.replace("present.", "past_key_values.", 1): v for n, v in by.items()
                if n.startswith("present.")}
        return np.asarray(by["logits"], np.float32).reshape(-1), past

    def prefill(self, ids: list[int], pixel_values: np.ndarray) -> tuple[np.ndarray, Decoding]:
        feeds, nxt = self.prefill_feeds(ids, pixel_values)
        logits, past = self._run(feeds)
        return logits, Decoding(past, len(ids), nxt)

    def step(self, token: int, state: Decoding) -> np.ndarray:
        """One new token: its logits ``[V]``; `state` moves on."""
        d = self.inputs["inputs_embeds"].shape[-1]
        no_image = np.zeros((0, d) if self.config.get("features_rank", 3) == 2
                            else (1, 0, d), np.float32)
        feeds = {"inputs_embeds": self.embed(np.asarray([[token]], np.int64), no_image),
                 "attention_mask": np.ones((1, state.total + 1), np.int64), **state.past}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.full((3, 1, 1), state.position, np.int64)
        logits, state.past = self._run(feeds)
        state.total += 1
        state.position += 1
        return logits
