"""Greedy generation on a vision-language bundle: no torch (vtc's LLaVA and Qwen2.5-VL
bundles; `vtc generate` and `python -m vtc.runtime.generate`).

The bundle holds ``vision.onnx`` (``pixel_values`` → ``image_features``, and for
Qwen2.5-VL ``image_positions``), ``embedding.onnx`` (``input_ids``, ``image_features``
→ ``inputs_embeds``) and ``decoder.onnx`` (the model builder's decoder, rewritten by
vtc's passes); ``tokenizer.json``; ``generation.json`` (vtc's processor: the chat
template, the image processing, the cut visual count K, and ``runtime``: which runtime
runs it). This module is the processor (genai's own image processors do not cover
LLaVA, and a vtc bundle has a static image size):

1. the prompt (wrapped in the template unless it already holds the image token) →
   token ids with one image token, expanded to K image tokens; one image per prompt;
   with an LM cut (FastV, PyramidDrop, an exit) the image must sit where the bundle was
   built for (``image_start``: the template puts it there);
2. image → ``pixel_values``: ``[1, 3, H, W]`` (LLaVA: CLIP's crop and normalisation) or
   Qwen2.5-VL's patches ``[N, 1176]`` at the bundle's size (`vtc.runtime.mrope`; an
   image whose size maps to another grid is refused, naming the built size);
3. ``runtime: onnxruntime-genai`` (``genai_config.json`` beside the graphs):
   ``og.NamedTensors`` {input_ids, pixel_values, num_image_tokens: [K], and for
   Qwen2.5-VL image_grid_thw} → ``Generator.set_inputs`` (vision, embedding, decoder
   prefill; genai computes Qwen's M-RoPE positions) → greedy steps until an EOS id or
   ``max_new_tokens``; ``runtime: onnxruntime`` (no genai_config.json: genai would
   give the kept tokens of a cut before the LLM the wrong positions): the same graphs
   through onnxruntime sessions (`vtc.runtime.ortloop`). The prompt may have any length
   up to the bundle's ``max_length`` (with the new tokens).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from vtc.runtime import BundleError, graph_files, listed_files, open_session, to_input, verify

GRAPHS = ("vision", "embedding", "decoder")
GENAI, ORT = "onnxruntime-genai", "onnxruntime"  # generation.json "runtime"
MAX_NEW_TOKENS = 4096  # `--max-new-tokens` of both entry points: 1..this


@dataclass
class Result:
    """One generation: new token ids, their text, the first step's logits ``[vocab]``,
    seconds to the first logits (vision + embedding + decoder prefill, ``prefill_s``) and
    in the decode steps."""

    tokens: list[int]
    text: str
    first_logits: np.ndarray
    prefill_s: float
    decode_s: float
    lm_tokens: int  # tokens of the prompt the decoder read (text + visual)
    stopped: str = "max_new_tokens"  # or "eos"

    @property
    def tokens_per_s(self) -> float:
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_s if self.decode_s > 0 and steps else 0.0


def _verify(folder: Path) -> None:
    """The manifest's sha256 of every file genai and this module read."""
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
             *(["genai_config.json"] if "genai_config.json" in listed else []),
             *(n for g in GRAPHS for n in graph_files(f"{g}.onnx", listed))]
    verify(folder, names, man)


def _genai() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise BundleError("vision-language bundles run on onnxruntime-genai: pip install "
                          "onnxruntime-genai") from None
    return og


def _genai_model(folder: Path) -> Any:
    og = _genai()
    try:
        return og.Model(str(folder))
    except Exception as exc:  # genai's own error: its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{folder}: onnxruntime-genai cannot load the bundle ({first}); "
                          "rebuild it with vtc-export") from None


class VlmBundle:
    """A loaded VLM bundle (module docstring)."""

    def __init__(self, folder: Path, config: dict[str, Any], genai_config: dict[str, Any],
                 model: Any, tokenizer: Any) -> None:
        self.folder, self.config, self.tokenizer = folder, config, tokenizer
        self._model = model
        self.runtime = str(config.get("runtime", GENAI))
        self.decoder_config: dict[str, Any] = (config["decoder"] if self.runtime == ORT
                                               else genai_config["model"]["decoder"])
        self.max_length = int(config["max_length"] if self.runtime == ORT
                              else genai_config["search"]["max_length"])
        # how an image becomes pixel_values (bundles before "processor": CLIP's crop)
        self.processor: dict[str, Any] = config.get("processor") or {
            "kind": "clip", **{k: config[k] for k in ("image_size", "resize", "mean", "std")}}
        self.visual = int(config["visual_tokens"])
        self.image_token_id = int(config["image_token_id"])
        self.eos = {int(i) for i in config["eos_token_ids"]}
        self.precision = str(config.get("decoder_precision", "fp32"))
        # an LM cut's static image span (bundles before vtc wrote "cuts": under "fastv")
        start = config.get("image_start", (config.get("fastv") or {}).get("image_start"))
        self.image_start: int | None = start
        self._sessions: dict[str, Any] = {}

    @classmethod
    def load(cls, folder: str | Path, verified: bool = True, lazy: bool = False) -> VlmBundle:
        """Read generation.json, the tokenizer and the genai model. `verified`: check the
        sha256 manifest.json lists for each file read (False only while vtc-export
        builds the bundle, before its manifest exists); `lazy`: load the genai model on
        first use (the timing stage, which holds a phase's graphs at a time)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        try:
            config = json.loads((folder / "generation.json").read_text())
            on_genai = config.get("runtime", GENAI) == GENAI
            genai_cfg = (json.loads((folder / "genai_config.json").read_text()) if on_genai
                         else {})
        except (OSError, ValueError, AttributeError) as exc:
            raise BundleError(f"{folder}: not a vtc vision-language bundle (generation.json, "
                              f"genai_config.json: {type(exc).__name__}); build one with "
                              "vtc-export on a LLaVA checkpoint") from None
        missing = [g for g in GRAPHS if not (folder / f"{g}.onnx").is_file()]
        if missing:
            raise BundleError(f"{folder}: missing {', '.join(f'{g}.onnx' for g in missing)}; "
                              "rebuild the bundle")
        tok_path = folder / "tokenizer.json"
        if not tok_path.is_file():
            raise BundleError(f"{tok_path}: no tokenizer; rebuild from a checkpoint that has "
                              "tokenizer.json")
        if verified:
            _verify(folder)
        model = _genai_model(folder) if on_genai and not lazy else None
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as exc:  # the tokenizers library's own error: one line
            raise BundleError(f"{tok_path}: not a tokenizer file ({type(exc).__name__}); "
                              "rebuild the bundle") from None
        try:
            return cls(folder, config, genai_cfg, model, tokenizer)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{folder}: generation.json or genai_config.json lacks a field "
                              f"({type(exc).__name__}: {exc}); rebuild the bundle with "
                              "vtc-export") from None

    @property
    def model(self) -> Any:
        """The onnxruntime-genai model (loaded on first use after `load(lazy=True)`)."""
        if self._model is None:
            self._model = _genai_model(self.folder)
        return self._model

    def release(self) -> None:
        """Drop the onnxruntime sessions and the genai model (memory: the next use
        loads them again)."""
        self._sessions.clear()
        self._model = None
        if hasattr(self, "_loop"):
            del self._loop

    def session(self, graph: str) -> Any:
        """An onnxruntime session on one of the bundle's graphs (timing and checks)."""
        if graph not in self._sessions:
            self._sessions[graph] = open_session(self.folder / f"{graph}.onnx", None)
        return self._sessions[graph]

    # ---- inputs -------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, images: int = 1, max_new_tokens: int = 0) -> list[int]:
        """Token ids of the prompt with its one image token (in the chat template unless
        it holds the image token); BundleError when the image tokens and images do not
        match, the image is not where an LM-cut bundle needs it, or the prompt and the new
        tokens pass ``max_length``."""
        image_token = self.config["image_token"]
        text = prompt if image_token in prompt else self.config["template"].format(prompt=prompt)
        ids: list[int] = self.tokenizer.encode(text).ids
        found = ids.count(self.image_token_id)
        if found != images or images != 1:
            raise BundleError(f"the prompt holds {found} {image_token} token(s) but "
                              f"{images} image(s) were given; give one image and at most "
                              f"one {image_token} (this bundle takes one image per prompt)")
        at = ids.index(self.image_token_id)
        if self.image_start is not None and at != self.image_start:
            raise BundleError(f"the image is token {at} of the prompt but this bundle's LM "
                              f"cut was built for an image at token {self.image_start} (the "
                              "chat template's place); put the prompt text after the image")
        total = len(ids) - 1 + self.visual + max_new_tokens
        if total > self.max_length:
            raise BundleError(f"the prompt ({len(ids) - 1} text + {self.visual} visual tokens) "
                              f"and {max_new_tokens} new tokens pass this bundle's max_length "
                              f"{self.max_length}; shorten the prompt or ask fewer tokens")
        return ids

    def expand(self, ids: list[int]) -> list[int]:
        """The one image token → K image tokens (what the embedding graph fills)."""
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * self.visual + ids[at + 1:]

    def read_image(self, path: str | Path, fit: bool = False) -> np.ndarray:
        """`pixels` of an image file; BundleError naming the file when it is missing or
        not an image Pillow reads safely (a decompression bomb included), or a Qwen2.5-VL
        image of another size than the bundle's (unless `fit`)."""
        if Path(path).exists() and not Path(path).is_file():
            raise BundleError(f"--image {path}: not a regular file (a directory, device or "
                              "pipe); give a JPEG or PNG file")
        try:
            return self.pixels(path, fit)
        except BundleError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise BundleError(f"--image {path}: not a readable image ({type(exc).__name__}); "
                              "give a JPEG or PNG file") from None

    def pixels(self, image: Image.Image | str | Path, fit: bool = False) -> np.ndarray:
        """An image → ``pixel_values`` (module docstring, step 2): LLaVA's
        ``[1, 3, H, W]``, Qwen2.5-VL's patch rows. `fit`: a Qwen2.5-VL image of another
        size is resized to the bundle's instead of refused (the validation's photos)."""
        c = self.processor
        if c["kind"] == "qwen2_5_vl":
            from vtc.runtime import mrope

            if isinstance(image, str | Path):
                with Image.open(image) as img:
                    return mrope.patches(img.convert("RGB"), c, fit, str(image))
            return mrope.patches(image.convert("RGB"), c, fit, "the image")
        size = c["image_size"]
        return to_input(image, size, size, c["resize"], 3, np.asarray(c["mean"], np.float32),
                        np.asarray(c["std"], np.float32))[None]

    def inputs(self, ids: list[int], pixel_values: np.ndarray) -> Any:
        """The genai inputs of one prompt (module docstring, step 3)."""
        og = _genai()
        named = og.NamedTensors()
        named["input_ids"] = np.asarray([self.expand(ids)], np.int32)
        named["pixel_values"] = np.ascontiguousarray(pixel_values, np.float32)
        named["num_image_tokens"] = np.asarray([self.visual], np.int64)
        if self.processor["kind"] == "qwen2_5_vl":
            from vtc.runtime import mrope

            h, w = mrope.grid(self.processor)
            m = self.processor["merge"]
            named["image_grid_thw"] = np.asarray([[1, h * m, w * m]], np.int64)
        return named

    def loop(self) -> Any:
        """The onnxruntime loop over the bundle's graphs (`vtc.runtime.ortloop`)."""
        from vtc.runtime.ortloop import OrtLoop

        if not hasattr(self, "_loop"):
            self._loop = OrtLoop(self.session, self.config)
        return self._loop

    def prefill_feeds(self, ids: list[int], pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for one prompt (the vision and embedding graphs run once,
        an empty cache): what the decoder's prefill is timed on."""
        return self.loop().prefill_feeds(self.expand(ids), pixel_values)[0]

    # ---- the loop ---------------------------------------------------------------------------
    def generate(self, ids: list[int], pixel_values: np.ndarray, max_new_tokens: int = 32,
                 on_token: Callable[[int, float], None] | None = None,
                 stop_at_eos: bool = True) -> Result:
        """Greedy decoding (module docstring); `on_token(token, elapsed_s)` per token;
        `stop_at_eos=False` runs all `max_new_tokens` steps (timing)."""
        if self.runtime == ORT:
            return self._generate_ort(ids, pixel_values, max_new_tokens, on_token, stop_at_eos)
        og = _genai()
        full = len(ids) - 1 + self.visual
        params = og.GeneratorParams(self.model)
        opts: dict[str, Any] = {"max_length": full + max_new_tokens, "do_sample": False}
        if not stop_at_eos:
            opts["min_length"] = full + max_new_tokens
        params.set_search_options(**opts)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.set_inputs(self.inputs(ids, pixel_values))
        first = np.array(gen.get_logits(), dtype=np.float32).reshape(-1)

        def tokens() -> Iterator[int]:
            while not gen.is_done():
                gen.generate_next_token()
                yield int(gen.get_next_tokens()[0])

        return self._decode(tokens(), first, t0, full, max_new_tokens, on_token, stop_at_eos)

    def _generate_ort(self, ids: list[int], pixel_values: np.ndarray, max_new_tokens: int,
                      on_token: Callable[[int, float], None] | None, stop_at_eos: bool
                      ) -> Result:
        loop = self.loop()
        full = self.expand(ids)
        t0 = time.perf_counter()
        first, state = loop.prefill(full, pixel_values)

        def tokens() -> Iterator[int]:
            logits = first
            while True:  # a step runs only when the caller asks for one more token
                nxt = int(np.argmax(logits))
                yield nxt
                logits = loop.step(nxt, state)

        return self._decode(tokens(), first, t0, len(full), max_new_tokens, on_token,
                            stop_at_eos)

    def _decode(self, tokens: Iterator[int], first: np.ndarray, t0: float, lm_tokens: int,
                max_new_tokens: int, on_token: Callable[[int, float], None] | None,
                stop_at_eos: bool) -> Result:
        """Draw greedy tokens from either runtime's generator (the prefill done since
        `t0`) up to `max_new_tokens` or an end-of-sequence token; the Result."""
        t1 = time.perf_counter()
        out: list[int] = []
        stopped = "max_new_tokens"
        while len(out) < max_new_tokens:
            nxt = next(tokens, None)
            if nxt is None:  # genai's generator is done (its max_length)
                break
            out.append(nxt)
            if on_token is not None:
                on_token(nxt, time.perf_counter() - t1)
            if nxt in self.eos and stop_at_eos:
                stopped = "eos"
                break
        t2 = time.perf_counter()
        text = self.tokenizer.decode([i for i in out if i not in self.eos])
        return Result(out, text, first, t1 - t0, t2 - t1, lm_tokens, stopped)


def main(argv: list[str] | None = None) -> NoReturn:
    """``python -m vtc.runtime.generate BUNDLE --image IMG --prompt TEXT``: the text on
    stdout, one JSON line of timings on stderr; in `vtc.errors.guard`: exit 2 with one
    line on bad input, 3 on an internal error, 130 interrupted."""
    import argparse
    import sys

    from vtc.errors import guard, install_signal_handlers
    from vtc.runtime import ArgParser

    install_signal_handlers()  # before anything else: an interrupt exits 130

    def new_tokens(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= n <= MAX_NEW_TOKENS:
            raise argparse.ArgumentTypeError(f"{n} is not in 1..{MAX_NEW_TOKENS}")
        return n

    def run() -> int:
        ap = ArgParser(prog="python -m vtc.runtime.generate")
        ap.add_argument("bundle")
        ap.add_argument("--image", action="append", required=True)
        ap.add_argument("--prompt", required=True)
        ap.add_argument("--max-new-tokens", type=new_tokens, default=64,
                        help=f"1..{MAX_NEW_TOKENS} (default 64)")
        args = ap.parse_args(argv)
        b = VlmBundle.load(args.bundle)
        ids = b.prompt_ids(args.prompt, len(args.image), args.max_new_tokens)
        px = b.read_image(args.image[0])
        res = b.generate(ids, px, args.max_new_tokens)
        print(res.text)
        print(json.dumps({"tokens": res.tokens, "stopped": res.stopped,
                          "prefill_ms": round(res.prefill_s * 1e3, 3),
                          "tokens_per_s": round(res.tokens_per_s, 2)}), file=sys.stderr)
        return 0

    guard(run)


if __name__ == "__main__":
    main()
