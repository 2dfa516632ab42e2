"""The text stage of an image–text model (a full CLIP checkpoint), after validate:
export the text tower unchanged to ``text.onnx`` (`vtc.exporter.clip_text`), build its
engine with the recipe's engine kind (the registry, `vtc.backends.engines`), and judge
zero-shot agreement (`vtc.validate.zero_shot`): the compressed vision engine's
``image_embeds`` (the validate stage's outputs) and the text engine's ``text_embeds``
against the eager uncompressed HF CLIPModel on the same images and captions. The
checkpoint's tokenizer is saved into the bundle's ``tokenizer/`` so that a user can make
the text engine's inputs.

The text engine is built in the reference configuration (fp32, TF32 off, no CUDA graph)
and shipped as built; parity and agreement run on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vtc.backends import engines
from vtc.backends.base import Runner
from vtc.exporter.clip_text import (
    INPUTS,
    OUTPUT,
    Captions,
    eager_images,
    eager_text,
    export_text,
)
from vtc.recipe import RecipeBase
from vtc.report import ZeroShotInfo
from vtc.stages.compile import options
from vtc.stages.load import Loaded
from vtc.util import sha256_file
from vtc.validate.parity import compare
from vtc.validate.zero_shot import agreement

TEXT_GRAPH = "text.onnx"
TOKENIZER_DIR = "tokenizer"


def run_text(rt: Runner, captions: Captions, batch: int | None) -> np.ndarray:
    """`text_embeds` ``[K, D]`` of the captions; a static-batch engine (`batch`) gets full
    batches, the last padded with repeats, and only the real rows are kept."""
    feeds, k = captions.feeds(), len(captions.texts)
    if batch is None:
        return rt.infer(feeds)[OUTPUT]
    outs = []
    for start in range(0, k, batch):
        idx = (np.arange(start, start + batch) % k)
        real = min(batch, k - start)
        outs.append(rt.infer({n: feeds[n][idx] for n in INPUTS})[OUTPUT][:real])
    return np.concatenate(outs)


def zero_shot(recipe: RecipeBase, loaded: Loaded, tmp: Path, images: np.ndarray,
              x: np.ndarray) -> ZeroShotInfo:
    """Write text.onnx, its engine and tokenizer/ into `tmp`; agreement of the engines
    (`images`: the compressed vision engine's image_embeds for the pixels `x`) with the
    eager CLIPModel."""
    assert loaded.family is not None and loaded.captions is not None
    full: Any = loaded.family.image_text(loaded.model)
    caps = loaded.captions
    dynamic = loaded.dynamic
    graph = export_text(full, caps, loaded.batch, tmp / TEXT_GRAPH, recipe.export.opset,
                        dynamic)
    engine = engines.get(recipe.backend.kind)
    built = tmp / f"text{engine.suffix}"
    with engine.runner(graph, built, options(recipe).reference()) as rt:
        texts = run_text(rt, caps, None if dynamic else loaded.batch)
    ref_texts = eager_text(full, caps)
    ref_images = eager_images(full, x)
    res = agreement(images, texts, ref_images, ref_texts)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
    return ZeroShotInfo(
        n_images=len(images), n_captions=len(caps.texts), captions=list(caps.texts),
        captions_from=caps.source,  # type: ignore[arg-type]
        text_length=caps.length, captions_truncated=caps.truncated,
        text_parity=compare(ref_texts, texts), text_graph=graph.name,
        text_engine=built.name, **res)


def manifest_entry(tmp: Path, info: ZeroShotInfo, batch: int | str) -> dict[str, Any]:
    """The manifest's `text` section: the text tower's files, inputs and tokenizer."""
    tok = tmp / TOKENIZER_DIR
    return {
        "graph": info.text_graph, "engine": info.text_engine,
        "inputs": {n: {"shape": [batch, info.text_length], "dtype": "int64"} for n in INPUTS},
        "output": {"name": OUTPUT, "shape": [batch, info.text_parity.shape[-1]],
                   "dtype": "float32"},
        "tokenizer": {f"{TOKENIZER_DIR}/{p.name}": sha256_file(p)
                      for p in sorted(tok.iterdir()) if p.is_file()} if tok.is_dir() else {},
        "padding": "max_length (pad to text_length), truncation to text_length",
    }


__all__ = ["TEXT_GRAPH", "TOKENIZER_DIR", "manifest_entry", "run_text", "zero_shot"]
