"""Stage 1, load: open SOURCE and learn what the budget needs to know about it.

An HF checkpoint is loaded into its family's eager model (the reference of every
parity check); an ONNX source is read once (with its external data), checked,
pinned to the build batch and folded. Both give the token geometry the budget is
resolved against. Every problem is an input error raised here, before any
expensive work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from vtc import passes
from vtc.backends import engines
from vtc.budget import Geometry
from vtc.data.captions import DEFAULT_CAPTIONS
from vtc.exporter import Family, get_family
from vtc.exporter.clip_text import Captions, load_tokenizer, text_length, tokenize
from vtc.exporter.registry import IMAGENET_MEAN, IMAGENET_STD
from vtc.passes.graph import GraphError, find_blocks, mlp_width
from vtc.passes.model_io import ImageSize, read_onnx
from vtc.recipe import RecipeBase
from vtc.report import Preprocess
from vtc.source import Source, SourceError
from vtc.stages.inputs import (
    CONFIG,
    PREPROCESSOR,
    Hints,
    image_dims,
    pick_image_input,
    preprocess,
    read_hints,
    real_inputs,
    zero_inputs,
)

Log = Callable[[str], None]


@dataclass
class Loaded:
    """What the later stages need from SOURCE.

    model: the family's eager model (HF sources), None for ONNX.
    proto: the ONNX source as read, None for HF.
    graph: the ONNX source pinned to `batch` and folded (static batch only).
    """

    source: Source
    family: Family | None
    model: Any
    geometry: Geometry
    batch: int  # the batch the engines are built (and timed) at
    pre: Preprocess  # the image input [C, H, W] and how images become it
    dataset_resize: str = "stretch"  # datasets and photos: input.resize, else stretch
    proto: onnx.ModelProto | None = None
    graph: ir.Model | None = None
    # image–text models (full CLIP): the captions of the zero-shot tier, tokenized, and
    # the checkpoint's tokenizer (None for vision models)
    captions: Captions | None = None
    tokenizer: Any = None
    # the engines' batch axis is symbolic (`batch_axis`); `dynamic_required`: the recipe
    # asked for it (export.dynamic_batch: true), so a graph that cannot have it is refused
    # rather than built static
    dynamic: bool = False
    dynamic_required: bool = False
    labels: dict[int, str] | None = None  # class names (config.json id2label), if known

    @property
    def hw(self) -> tuple[int, int]:
        """The image input's (height, width), pixels."""
        return self.pre.height, self.pre.width


def _grid_prefix(n: int, hw: tuple[int, int] | None) -> int | None:
    """Leading non-patch tokens (1, else 0) when the other tokens tile the `hw` image
    in square patches that divide it (e.g. 128×512 in 8-pixel patches: 1024 tokens)."""
    if hw is None:
        return None
    h, w = hw
    for prefix in (1, 0):
        patches = n - prefix
        if patches < 1 or (h * w) % patches:
            continue
        p = math.isqrt(h * w // patches)
        if p * p * patches == h * w and h % p == 0 and w % p == 0:
            return prefix
    return None


def onnx_geometry(model: ir.Model, protected: int | None,
                  hw: tuple[int, int] | None = None) -> Geometry:
    """Budget geometry read off a prepared ONNX graph (no eager model to ask); `hw`, the
    image input's (height, width), tells a non-square patch grid's CLS token apart."""
    blocks = find_blocks(model)
    n = blocks[0].tokens
    if protected is None:
        protected = _grid_prefix(n, hw)
    if protected is None:
        if math.isqrt(n - 1) ** 2 == n - 1:
            protected = 1  # a square grid plus a CLS token
        elif math.isqrt(n) ** 2 == n:
            protected = 0  # a square grid, no CLS (SigLIP-like)
        else:
            raise SourceError(f"cannot tell how many of the {n} tokens are CLS/register tokens; "
                              "pass --protected N")
    if protected >= n - 1:
        raise SourceError(f"--protected {protected} leaves {n - protected} of the {n} tokens to "
                          f"reduce; give at most {n - 2}")
    return Geometry(tokens=n, protected=protected, width=blocks[0].width,
                    mlp_width=mlp_width(blocks[0]), layers=len(blocks), heads=blocks[0].heads)


def batch_axis(recipe: RecipeBase, log: Log = lambda _msg: None) -> tuple[bool, bool]:
    """`(dynamic, required)`: export.dynamic_batch resolved against the engine. null (the
    default) is a symbolic batch, except for a TensorRT engine or backend.cuda_graph: on,
    which get the static batch they profile or capture; true with cuda_graph: on is
    refused (a captured graph replays one batch)."""
    want, b = recipe.export.dynamic_batch, recipe.backend
    if want and b.cuda_graph == "on":
        raise SourceError("export.dynamic_batch: true and backend.cuda_graph: on: a CUDA graph "
                          "replays one captured batch; set export.dynamic_batch: false (or "
                          "backend.cuda_graph: auto)")
    if want is not None:
        return want, want
    needs = (engines.get(b.kind).static_batch or
             ("backend.cuda_graph: on (graph capture)" if b.cuda_graph == "on" else None))
    if needs is not None:
        log(f"      static batch for {needs}; export.dynamic_batch: true makes it symbolic")
        return False, False
    return True, False


def _static_batch(proto: onnx.ModelProto, name: str) -> int | None:
    """Input `name`'s batch when it is a fixed number, else None (symbolic)."""
    dims = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    first = dims[0] if len(dims) else None
    return int(first.dim_value) if first is not None and first.HasField("dim_value") else None


def _load_onnx(src: Source, recipe: RecipeBase, batch: int, batch_given: bool,
               protected: int | None, log: Log) -> Loaded:
    proto = read_onnx(src.path)
    if any(n.name.startswith("vtc_") for n in proto.graph.node):
        raise SourceError(f"SOURCE {src.spec} was already compressed by vtc; give the original "
                          "model (a bundle's baseline.onnx is the uncompressed graph)")
    dynamic, required = batch_axis(recipe, log)
    name = pick_image_input(proto, recipe.input.name)
    several = len(real_inputs(proto)) > 1
    fixed = _static_batch(proto, name)
    if required and several:
        raise SourceError(f"{src.spec} has several inputs; export.dynamic_batch supports "
                          "one-input graphs only: build at a static --batch")
    if required and fixed is not None:
        raise SourceError(f"{src.spec} has a static batch; export.dynamic_batch needs a "
                          "source exported with a dynamic batch axis")
    if dynamic and (several or fixed is not None):
        log(f"      {src.spec} has {'several inputs' if several else 'a static batch'}: "
            "the engines keep a static batch")
        dynamic = False
    if fixed is not None and fixed != batch:
        if batch_given:
            raise SourceError(f"{src.spec} has a static batch of {fixed}, not --batch "
                              f"{batch}; pass --batch {fixed} or re-export it")
        log(f"      {src.spec} has a static batch of {fixed}: building and timing at it")
        batch = fixed
    hints = read_hints(src.path.parent)
    pinned, size_from = _pin(proto, recipe, passes.PROBES[0] if dynamic else batch, name, hints)
    channels, h, w = image_dims(pinned, name)
    try:
        geometry = onnx_geometry(pinned, protected, (h, w))
    except GraphError as exc:
        if size_from == "graph":
            raise
        key = "export.image_size" if size_from == "recipe" else f"the image size of {size_from}"
        raise GraphError(f"{exc} (with {key}, {h}×{w}: is it a resolution this graph "
                         "accepts, e.g. the one it was exported at?)") from exc
    origin = {k: v for k, v in hints.where.items() if k != "image_size"}
    origin["image_size"] = size_from
    pre = preprocess(recipe.input, name, channels, h, w, hints.mean or IMAGENET_MEAN,
                     hints.std or IMAGENET_STD,
                     f"the graph input {name!r} [{batch}, {channels}, {h}, {w}]",
                     zero_inputs(pinned, name), hints.resize, origin)
    return Loaded(source=src, family=None, model=None, geometry=geometry, batch=batch,
                  pre=pre, dataset_resize=recipe.input.resize or "stretch", proto=proto,
                  graph=None if dynamic else pinned, dynamic=dynamic, dynamic_required=required,
                  labels=hints.labels)


def _pin(proto: onnx.ModelProto, recipe: RecipeBase, batch: int, name: str, hints: Hints
         ) -> tuple[ir.Model, str]:
    """The source pinned at `batch` and folded, and where its image size came from: the
    graph's static input, else export.image_size ("recipe"), else the files beside it."""
    dims = next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim
    static = len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:])
    size: ImageSize | None = recipe.export.image_size
    where = "graph" if static else "recipe" if size is not None else None
    if where is None and hints.size is not None:
        size, where = hints.size, hints.where["image_size"]
    try:
        pinned = passes.prepare(ir.from_proto(proto), batch, size,
                                recipe.input.channels or hints.channels)
    except GraphError:
        raise
    except Exception as exc:  # a third-party graph the folder or shape inference rejects
        px = f", {size} px" if isinstance(size, int) else f", {size[0]}×{size[1]} px" if size \
            else ""
        raise GraphError(f"cannot pin and fold the graph at batch {batch}{px} "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); export "
                         "it with static shapes or give the batch and export.image_size it was "
                         "exported for") from exc
    return pinned, where or "graph"


def _text_settings(recipe: RecipeBase, captions: list[str] | None) -> list[str]:
    """The text-tower settings given: the --captions file, validate.captions,
    export.text_length."""
    return [name for name, v in (("--captions", captions),
                                 ("validate.captions", recipe.validate_.captions),
                                 ("export.text_length", recipe.export.text_length))
            if v is not None]


def _captions(src: Source, recipe: RecipeBase, full: Any, given: list[str] | None
              ) -> tuple[Captions, Any]:
    """The zero-shot captions (--captions, else validate.captions, else vtc's list),
    tokenized with the checkpoint's tokenizer, and the tokenizer."""
    tokenizer = load_tokenizer(src.path)
    length = text_length(full, recipe.export.text_length)
    if given is not None:
        texts, source = given, "file"
    elif recipe.validate_.captions is not None:
        texts, source = recipe.validate_.captions, "recipe"
    else:
        texts, source = list(DEFAULT_CAPTIONS), "default"
    return tokenize(tokenizer, list(texts), length, source), tokenizer


def load(src: Source, recipe: RecipeBase, batch: int, batch_given: bool = False,
         protected: int | None = None, allow_pickle: bool = False,
         log: Log = lambda _msg: None, captions: list[str] | None = None) -> Loaded:
    """Open `src` (already resolved) for `recipe` at `batch` (see the module docstring).
    `captions`: the --captions file's (image–text models only)."""
    given = _text_settings(recipe, captions)
    if src.kind == "onnx" and given:
        raise SourceError(f"{' and '.join(given)}: captions and the text length are for "
                          "image–text checkpoints (a full CLIP directory); an ONNX source has "
                          "no text tower: drop them")
    if src.kind == "onnx":
        try:
            return _load_onnx(src, recipe, batch, batch_given, protected, log)
        except GraphError as exc:
            text = str(exc)
            prefix = "" if text.startswith(str(src.path)) else f"SOURCE {src.spec}: "
            raise SourceError(prefix + text) from exc
    if protected is not None:
        raise SourceError("--protected is for ONNX sources only: an HF model's family knows "
                          "its protected tokens; leave the flag out")
    if recipe.input.name not in (None, "pixel_values"):
        raise SourceError(f"input.name={recipe.input.name!r}: an HF model takes one input, "
                          "pixel_values; leave input.name out")
    dynamic, required = batch_axis(recipe, log)
    family = get_family(src.model_type or "")
    model = family.load(src.path, allow_pickle=allow_pickle)
    size = recipe.export.image_size
    hw = (size, size) if size else family.image_hw(model)
    family.check_image_size(model, hw)
    channels = family.num_channels(model)
    hints = read_hints(src.path)
    mean, std = list(family.mean(model)), list(family.std(model))
    pre = preprocess(recipe.input, "pixel_values", channels, *hw, mean, std,
                     "the model (its config's num_channels)", resize=hints.resize,
                     origin=_hf_origin(hints, hw, mean, std, size is not None))
    full = family.image_text(model)
    if full is None and given:
        raise SourceError(f"{' and '.join(given)}: captions and the text length are for "
                          f"image–text checkpoints (a full CLIP directory); {src.spec} is a "
                          f"{family.name} vision model without a text tower: drop them")
    caps, tokenizer = _captions(src, recipe, full, captions) if full is not None else (None,
                                                                                       None)
    return Loaded(source=src, family=family, model=model, geometry=family.geometry(model, hw),
                  batch=batch, pre=pre, dataset_resize=recipe.input.resize or "stretch",
                  captions=caps, tokenizer=tokenizer, dynamic=dynamic, dynamic_required=required,
                  labels=hints.labels)


def _hf_origin(hints: Hints, hw: tuple[int, int], mean: list[float], std: list[float],
               size_given: bool) -> dict[str, str]:
    """Where an HF checkpoint's input settings came from (`Preprocess.origin`): the
    family reads them from its preprocessor_config.json and config.json, or defaults."""
    origin = {k: v for k, v in hints.where.items() if k in ("resize", "labels")}
    origin["image_size"] = ("recipe" if size_given else
                            hints.where["image_size"] if hints.size == hw else CONFIG)
    same = hints.mean is not None and np.allclose(hints.mean[:len(mean)], mean) and \
        hints.std is not None and np.allclose(hints.std[:len(std)], std)
    origin["mean"] = origin["std"] = PREPROCESSOR if same else "default"
    return origin


def _available_bytes() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(loaded: Loaded, samples: int) -> None:
    """Refuse a batch (or a sample count) whose activations cannot fit in memory, before
    anything is allocated: one forward pass keeps the input, the attention maps and the
    widest activations of a block alive, for the engine, the baseline and the eager model."""
    g, b, (h, w) = loaded.geometry, loaded.batch, loaded.hw
    pixels = loaded.pre.channels * h * w
    per_image = 4 * (pixels + 2 * g.heads * g.tokens ** 2
                     + 4 * g.tokens * max(3 * g.width, g.mlp_width))
    need = 3 * b * per_image + 4 * pixels * max(samples, b)
    have = _available_bytes()
    if have is not None and need > have:
        raise SourceError(f"batch {b} at {h}×{w} px needs about {need / 2**30:.1f} GiB of memory "
                          f"for its activations and inputs; {have / 2**30:.1f} GiB are "
                          "available: lower --batch (or validate.samples)")
