"""Greedy generation on a vision-language bundle: onnxruntime + numpy + Pillow +
tokenizers, no torch (vtc's LLaVA bundles; `vtc generate` and
`python -m vtc.runtime.generate`).

The bundle holds ``vision.onnx``, ``embed.onnx``, ``prefill.onnx``, ``decode.onnx``,
``tokenizer.json`` and ``generation.json`` (the static sizes and the chat template).
One call:

1. the prompt (wrapped in the template unless it already holds the image token) →
   token ids; exactly one image token per image, one image per prompt;
2. image → ``pixel_values`` → ``image_embeds[1, K, D]``; ids → embeddings, with the K
   image embeddings in place of the image token: S = text + K ≤ P (the static prefill
   length), else a BundleError naming the limit and the rebuild;
3. left-pad to P (``attention_mask`` 0, zero embeddings), ``position_ids`` 0.. on the
   real tokens, ``image_start`` where the image begins → prefill → logits of the last
   token + every layer's cache;
4. decode one token at a time (``position_ids`` S + t, the mask grows by one) until an
   EOS id or ``max_new_tokens``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vtc.runtime import BundleError, graph_files, listed_files, open_session, to_input, verify

GRAPHS = ("vision", "embed", "prefill", "decode")


@dataclass
class Result:
    """One generation: new token ids, their text, the first step's logits ``[vocab]``,
    and seconds spent in the vision graph, the prefill and the decode steps."""

    tokens: list[int]
    text: str
    first_logits: np.ndarray
    vision_s: float
    prefill_s: float
    decode_s: float
    lm_tokens: int  # tokens the prefill read (text + visual, no padding)
    stopped: str = "max_new_tokens"  # or "eos"
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 and steps else 0.0


def _verify(folder: Path, graphs: list[Path]) -> None:
    """The manifest's sha256 of generation.json, tokenizer.json and each graph read
    (with its external data)."""
    try:
        man = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / 'manifest.json'}: {type(exc).__name__}; a vtc bundle "
                          "lists its files' sha256 there: copy the whole bundle folder, or "
                          "rebuild it with vtc-export") from None
    if not isinstance(man, dict):
        raise BundleError(f"{folder / 'manifest.json'} is not a JSON object; rebuild the "
                          "bundle with vtc-export")
    listed = listed_files(man)
    names = ["generation.json", "tokenizer.json",
             *(n for p in graphs for n in graph_files(p.name, listed))]
    verify(folder, names, man)


class VlmBundle:
    """A loaded VLM bundle (module docstring)."""

    def __init__(self, folder: Path, config: dict[str, Any], sessions: dict[str, Any],
                 tokenizer: Any) -> None:
        self.folder, self.config, self.sessions, self.tokenizer = (
            folder, config, sessions, tokenizer)
        self.prefill_length = int(config["prefill_length"])
        self.visual = int(config["visual_tokens"])
        self.image_token_id = int(config["image_token_id"])
        self.eos = {int(i) for i in config["eos_token_ids"]}

    @classmethod
    def load(cls, folder: str | Path, providers: Sequence[str] | None = None,
             graphs: dict[str, Path] | None = None, verified: bool = True) -> VlmBundle:
        """Read generation.json, the tokenizer and the four graphs (`graphs` overrides
        where each graph is read from, e.g. the uncut baseline). `verified`: check the
        sha256 manifest.json lists for each file read (False only while vtc-export
        builds the bundle, before its manifest exists)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        try:
            config = json.loads((folder / "generation.json").read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{folder}: not a vtc vision-language bundle (generation.json: "
                              f"{type(exc).__name__}); build one with vtc-export on a LLaVA "
                              "checkpoint") from None
        where = {g: folder / f"{g}.onnx" for g in GRAPHS} | (graphs or {})
        missing = [str(p) for p in where.values() if not p.is_file()]
        if missing:
            raise BundleError(f"{folder}: missing {', '.join(missing)}; rebuild the bundle")
        tok_path = folder / "tokenizer.json"
        if not tok_path.is_file():
            raise BundleError(f"{tok_path}: no tokenizer; rebuild from a checkpoint that has "
                              "tokenizer.json")
        if verified:
            _verify(folder, [p for g, p in where.items() if p == folder / f"{g}.onnx"])
        sessions = {g: open_session(p, providers) for g, p in where.items()}
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # the tokenizers library's own error: one line
            raise BundleError(f"{tok_path}: not a tokenizer file ({type(exc).__name__}); "
                              "rebuild the bundle") from None
        try:
            return cls(folder, config, sessions, tokenizer)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{folder / 'generation.json'} lacks a field ({type(exc).__name__}"
                              f": {exc}); rebuild the bundle with vtc-export") from None

    # ---- inputs -------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, images: int = 1) -> list[int]:
        """Token ids of the prompt (in the chat template unless it holds the image
        token); BundleError when the image tokens and images do not match."""
        image_token = self.config["image_token"]
        text = prompt if image_token in prompt else self.config["template"].format(prompt=prompt)
        ids: list[int] = self.tokenizer.encode(text).ids
        found = ids.count(self.image_token_id)
        if found != images:
            raise BundleError(f"the prompt holds {found} {image_token} token(s) but "
                              f"{images} image(s) were given; give one image and at most "
                              f"one {image_token} (this bundle takes one image per prompt)")
        if images != 1:
            raise BundleError(f"{images} images given; this bundle takes one image per "
                              "prompt")
        text_tokens = len(ids) - 1
        if text_tokens + self.visual > self.prefill_length:
            limit = self.prefill_length - self.visual
            raise BundleError(
                f"the prompt is {text_tokens} text tokens but this bundle's prefill holds "
                f"{self.prefill_length} = {self.visual} visual + at most {limit} text tokens; "
                f"shorten the prompt or rebuild with --set generate.prompt_tokens="
                f"{text_tokens}")
        return ids

    def pixels(self, image: Image.Image | str | Path) -> np.ndarray:
        """An image → ``pixel_values[1, 3, H, W]`` (the bundle's preprocessing)."""
        c = self.config
        return to_input(image, c["image_size"], c["image_size"], c["resize"], 3,
                        np.asarray(c["mean"], np.float32), np.asarray(c["std"], np.float32))[None]

    # ---- the loop ---------------------------------------------------------------------------
    def prefill_feeds(self, ids: list[int], image_embeds: np.ndarray
                      ) -> tuple[dict[str, np.ndarray], int]:
        """The prefill graph's inputs and S (real tokens)."""
        at = ids.index(self.image_token_id)
        emb = self.sessions["embed"]
        table_ids = np.asarray([ids[:at] + ids[at + 1:]], dtype=np.int64)
        text = emb.run(None, {"input_ids": table_ids})[0]
        seq = np.concatenate([text[:, :at], image_embeds, text[:, at:]], axis=1)
        s, p = seq.shape[1], self.prefill_length
        pad = p - s
        embeds = np.zeros((1, p, seq.shape[2]), np.float32)
        embeds[:, pad:] = seq
        mask = np.zeros((1, p), np.int64)
        mask[:, pad:] = 1
        pos = np.zeros((1, p), np.int64)
        pos[0, pad:] = np.arange(s)
        feeds: dict[str, np.ndarray] = {"inputs_embeds": embeds, "attention_mask": mask,
                                        "position_ids": pos}
        if any(i.name == "image_start" for i in self.sessions["prefill"].get_inputs()):
            feeds["image_start"] = np.asarray([pad + at], np.int64)
        return feeds, s

    def generate(self, ids: list[int], pixel_values: np.ndarray, max_new_tokens: int = 32,
                 on_token: Callable[[int, float], None] | None = None,
                 stop_at_eos: bool = True) -> Result:
        """Greedy decoding (module docstring); `on_token(token, elapsed_s)` per token;
        `stop_at_eos=False` runs all `max_new_tokens` steps (timing)."""
        t0 = time.perf_counter()
        image = self.sessions["vision"].run(None, {"pixel_values": pixel_values})[0]
        t1 = time.perf_counter()
        feeds, s = self.prefill_feeds(ids, image)
        pre = self.sessions["prefill"]
        names = [o.name for o in pre.get_outputs()]
        out = pre.run(None, feeds)
        t2 = time.perf_counter()
        logits, cache = out[0], out[1:]
        first = logits[0].copy()
        mask = feeds["attention_mask"]
        dec, emb = self.sessions["decode"], self.sessions["embed"]
        past_names = [n.replace("present", "past_key_values") for n in names[1:]]
        tokens: list[int] = []
        stopped = "max_new_tokens"
        for t in range(max_new_tokens):
            nxt = int(np.argmax(logits[0]))
            tokens.append(nxt)
            if on_token is not None:
                on_token(nxt, time.perf_counter() - t2)
            if nxt in self.eos and stop_at_eos:
                stopped = "eos"
                break
            if t == max_new_tokens - 1:
                break
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            step = {"inputs_embeds": emb.run(None, {"input_ids": np.asarray([[nxt]], np.int64)})[0],
                    "attention_mask": mask, "position_ids": np.asarray([[s + t]], np.int64)}
            step.update(zip(past_names, cache, strict=True))
            out = dec.run(None, step)
            logits, cache = out[0], out[1:]
        t3 = time.perf_counter()
        text = self.tokenizer.decode([i for i in tokens if i not in self.eos])
        return Result(tokens, text, first, t1 - t0, t2 - t1, t3 - t2, s, stopped)


def main(argv: list[str] | None = None) -> int:
    """``python -m vtc.runtime.generate BUNDLE --image IMG --prompt TEXT``: the text on
    stdout, one JSON line of timings on stderr; exit 2 with one line on bad input."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m vtc.runtime.generate")
    ap.add_argument("bundle")
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    try:
        b = VlmBundle.load(args.bundle)
        ids = b.prompt_ids(args.prompt, len(args.image))
        try:
            px = b.pixels(args.image[0])
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BundleError(f"--image {args.image[0]}: not a readable image "
                              f"({type(exc).__name__})") from None
        res = b.generate(ids, px, max(1, args.max_new_tokens))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.text)
    print(json.dumps({"tokens": res.tokens, "stopped": res.stopped,
                      "prefill_ms": round(res.prefill_s * 1e3, 3),
                      "tokens_per_s": round(res.tokens_per_s, 2)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
