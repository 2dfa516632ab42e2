"""``vtc generate``: greedy decoding on a vision-language bundle through its runtime
(`vtc.runtime.generate`: onnxruntime-genai or onnxruntime, numpy, Pillow, tokenizers;
no torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vtc.errors import guard

MAX_NEW_TOKENS = 4096  # = vtc.runtime.generate.MAX_NEW_TOKENS (not imported: start-up time)

__all__ = ["generate"]


@click.command("generate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              required=True, help="the image (one per <image> token; bundles take one)")
@click.option("--prompt", required=True,
              help="the question; wrapped in the bundle's chat template unless it holds "
                   "<image> itself")
@click.option("--max-new-tokens", default=64, show_default=True,
              type=click.IntRange(1, MAX_NEW_TOKENS),
              help="stop after this many new tokens (or at an EOS token)")
@click.option("--quiet", is_flag=True, help="print only the text, no progress on stderr")
def generate(bundle: Path, images: tuple[Path, ...], prompt: str, max_new_tokens: int,
             quiet: bool) -> None:
    """Answer PROMPT about an image with BUNDLE (a LLaVA or Qwen2.5-VL bundle from
    vtc-export) through its runtime (onnxruntime-genai; onnxruntime sessions where
    generation.json says so): vision graph → embedding graph → the decoder's prefill (any
    prompt length up to the bundle's max_length) → greedy decode, until EOS or
    --max-new-tokens. Progress (tokens/s) goes to stderr, the text to stdout.

    \b
    Examples:
      vtc-export ./llava-1.5-7b-hf --recipe llava-visionzip64 --out llava-vz64
      vtc generate llava-vz64 --image cat.jpg --prompt "What is in the picture?"
      vtc generate llava-vz64 --image cat.jpg --prompt "USER: <image>\\nDescribe it. ASSISTANT:"

    \b
    Exit codes: 0 done; 2 bad input (no bundle, unreadable image, image count not
    matching <image> tokens, a prompt and new tokens past the bundle's max_length, the
    image away from where an LM-cut bundle needs it, a Qwen2.5-VL image whose size maps to
    another grid than the bundle was built for — the message names the fix).
    """
    def _run() -> int:
        from vtc.runtime.generate import VlmBundle

        b = VlmBundle.load(bundle)  # BundleError (an InputError): one line, exit 2
        ids = b.prompt_ids(prompt, len(images), max_new_tokens)
        px = b.read_image(images[0])

        def progress(token: int, elapsed: float) -> None:
            if quiet:
                return
            n = progress.count = getattr(progress, "count", 0) + 1  # type: ignore[attr-defined]
            if n % 8 == 0:
                click.echo(f"  {n} tokens, {n / max(elapsed, 1e-9):.1f} tok/s", err=True)

        res = b.generate(ids, px, max_new_tokens, on_token=progress)
        click.echo(res.text)
        if not quiet:
            click.echo(f"{len(res.tokens)} tokens ({res.stopped}); first token "
                       f"{res.prefill_s * 1e3:.1f} ms (vision + prefill of {res.lm_tokens} "
                       f"tokens), decode {res.tokens_per_s:.1f} tok/s",
                       err=True)
        sys.stdout.flush()
        return 0

    guard(_run)
