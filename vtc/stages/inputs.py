"""The model input, read from the graph rather than assumed: which graph input carries
the image, its `[C, H, W]`, and how images become it (the recipe's `input:` section
over the graph's and the model family's defaults).

A graph with several inputs: `input.name` names the image; without it, the one
rank-4 float input is taken, and two or more are refused with their names. Every
other input is fed zeros of its (pinned, static) shape — documented in the README,
recorded in the report and in preprocess.json.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from vtc.recipe import InputCfg
from vtc.report import Preprocess, ZeroInput
from vtc.source import SourceError

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
           onnx.TensorProto.BFLOAT16}


def real_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (old exporters also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]


def _describe(inputs: Sequence[onnx.ValueInfoProto]) -> str:
    return ", ".join(f"{i.name} {_dims(i)}".replace("'", "") for i in inputs)


def _image_like(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    return t.elem_type in _FLOATS and len(t.shape.dim) == 4


def pick_image_input(proto: onnx.ModelProto, name: str | None) -> str:
    """The name of the graph input that carries the image (module docstring)."""
    inputs = real_inputs(proto)
    if name is not None:
        match = [i for i in inputs if i.name == name]
        if not match:
            raise SourceError(f"input.name={name!r} is not an input of the graph; its inputs: "
                              f"{_describe(inputs)}")
        if not _image_like(match[0]):
            raise SourceError(f"input.name={name!r} is not an image input (a rank-4 float "
                              f"tensor [B, C, H, W]): {_describe(match)}")
        return name
    if len(inputs) == 1:
        return inputs[0].name
    images = [i for i in inputs if _image_like(i)]
    if len(images) == 1:
        return images[0].name
    first = (images or inputs)[0].name
    raise SourceError(f"the graph has {len(inputs)} inputs ({_describe(inputs)}); set "
                      f"input.name to the one that carries the image, e.g. --set "
                      f"input.name={first}")


def image_dims(model: ir.Model, name: str) -> tuple[int, int, int]:
    """`(channels, height, width)` of the pinned graph's image input `name`."""
    value = next(v for v in model.graph.inputs if v.name == name)
    shape = value.shape
    dims = [d for d in shape if isinstance(d, int)] if shape is not None else []
    if shape is None or len(dims) != len(shape) or len(dims) != 4:
        raise SourceError(f"the ONNX model's input {name!r} is not a static [B, C, H, W] "
                          "image")
    if dims[1] not in (1, 3):
        raise SourceError(f"the ONNX model's input {name!r} {dims} has {dims[1]} channels; "
                          "vtc feeds gray (1) or RGB (3) images")
    return dims[1], dims[2], dims[3]


def zero_inputs(model: ir.Model, image: str) -> dict[str, ZeroInput]:
    """Every input but `image`, with its static shape and dtype (fed zeros)."""
    out: dict[str, ZeroInput] = {}
    for v in model.graph.inputs:
        if v.name == image:
            continue
        shape = list(v.shape) if v.shape is not None else []
        dims = [d for d in shape if isinstance(d, int)]
        if v.shape is None or len(dims) != len(shape):
            raise SourceError(f"the graph's input {v.name!r} {shape} has no static shape; vtc "
                              "feeds zeros to the inputs other than the image: export it with "
                              "static shapes")
        dtype = v.dtype.numpy() if v.dtype is not None else np.dtype(np.float32)
        out[str(v.name)] = ZeroInput(dims, np.dtype(dtype).name)
    return out


def _stat(given: list[float] | None, default: Sequence[float], channels: int, key: str,
          where: str) -> list[float]:
    if given is not None:
        if len(given) != channels:
            raise SourceError(f"input.{key} has {len(given)} values but {where} has "
                              f"{channels} channel{'s' * (channels > 1)}: give {channels}")
        return [float(x) for x in given]
    vals = [float(x) for x in default]
    if len(vals) == channels:
        return vals
    if channels == 1:  # an RGB default for a gray input: its average
        return [round(sum(vals) / len(vals), 6)]
    return vals[:1] * channels


def preprocess(cfg: InputCfg, name: str, channels: int, height: int, width: int,
               mean: Sequence[float], std: Sequence[float], where: str,
               zeros: dict[str, ZeroInput] | None = None) -> Preprocess:
    """The recipe's `input:` section checked against the graph input `[channels, height,
    width]` (`where` names it in errors); `mean`/`std` are the defaults."""
    if cfg.channels is not None and cfg.channels != channels:
        raise SourceError(f"input.channels={cfg.channels} does not match {where}, which takes "
                          f"{channels} channel{'s' * (channels > 1)}; set input.channels="
                          f"{channels} or leave it out")
    return Preprocess(name=name, channels=channels, height=height, width=width,
                      resize=cfg.resize or "crop",
                      mean=_stat(cfg.mean, mean, channels, "mean", where),
                      std=_stat(cfg.std, std, channels, "std", where),
                      zero_inputs=dict(zeros or {}))


__all__ = ["image_dims", "pick_image_input", "preprocess", "real_inputs", "zero_inputs"]
