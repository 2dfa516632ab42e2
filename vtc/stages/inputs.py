"""The model input, read from the graph rather than assumed: which graph input carries
the image, its `[C, H, W]`, and how images become it (the recipe's `input:` section
over the graph's and the model family's defaults).

A graph with several inputs: `input.name` names the image; without it, the one
rank-4 float input is taken, and two or more are refused with their names. Every
other input is fed zeros of its (pinned, static) shape — documented in the README,
recorded in the report and in preprocess.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    if not inputs:
        raise SourceError("the graph has no inputs; give an image encoder whose image is a "
                          "graph input [B, C, H, W]")
    if len(inputs) == 1:
        if not _image_like(inputs[0]):
            kind = onnx.TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)
            raise SourceError(f"the graph's only input, {_describe(inputs)} ({kind}), is not "
                              "an image (a rank-4 float tensor [B, C, H, W]); give an image "
                              "encoder")
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


PREPROCESSOR = "preprocessor_config.json"
CONFIG = "config.json"


@dataclass(frozen=True)
class Hints:
    """What a model's own files say about its input: optimum-cli and `save_pretrained`
    write config.json (`image_size`, `num_channels`, `id2label`) and
    preprocessor_config.json (`size` / `crop_size` {height, width}, `do_center_crop`,
    `image_mean` / `image_std`, `do_normalize`). `where`: the file each came from."""

    size: tuple[int, int] | None = None  # (height, width), pixels
    mean: list[float] | None = None
    std: list[float] | None = None
    resize: str | None = None  # "crop" (do_center_crop) or "stretch" (a fixed size)
    labels: dict[int, str] | None = None
    channels: int | None = None  # config.json num_channels (1 or 3)
    where: dict[str, str] = field(default_factory=dict)


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not readable UTF-8 JSON ({type(exc).__name__}); fix or "
                          "remove it (vtc reads image size, mean/std and labels from it)"
                          ) from exc
    if not isinstance(data, dict):
        raise SourceError(f"{path}: holds a {type(data).__name__}, not a mapping; fix or "
                          "remove it")
    return data


def _hw(value: Any) -> tuple[int, int] | None:
    """A size entry as (height, width): an int, [h, w], or {height, width}."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if isinstance(value, dict):
        h, w = value.get("height"), value.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 \
                and not isinstance(h, bool) and not isinstance(w, bool):
            return h, w
    return None


def _floats(value: Any) -> list[float] | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * 3
    if isinstance(value, list) and 1 <= len(value) <= 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return [float(x) for x in value]
    return None


def _labels(cfg: dict[str, Any]) -> dict[int, str] | None:
    raw = cfg.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}
    except (TypeError, ValueError):
        return None


def read_hints(folder: Path) -> Hints:
    """The input settings config.json and preprocessor_config.json in `folder` give (each
    absent when the files do not say); SourceError for a file that is not JSON."""
    pre, cfg = _json(folder / PREPROCESSOR) or {}, _json(folder / CONFIG) or {}
    where: dict[str, str] = {}
    size, resize = None, None
    if pre.get("do_center_crop") and _hw(pre.get("crop_size")):
        size, resize = _hw(pre.get("crop_size")), "crop"
    elif pre.get("do_resize", True) and _hw(pre.get("size")):
        size, resize = _hw(pre.get("size")), "stretch"
    if size is not None:
        where["image_size"] = where["resize"] = PREPROCESSOR
    elif _hw(cfg.get("image_size")):
        size, where["image_size"] = _hw(cfg.get("image_size")), CONFIG
    mean, std = _floats(pre.get("image_mean")), _floats(pre.get("image_std"))
    if pre.get("do_normalize") is False:
        mean, std = [0.0] * 3, [1.0] * 3
    if mean is not None and std is not None and all(x > 0 for x in std):
        where["mean"] = where["std"] = PREPROCESSOR
    else:
        mean = std = None
    labels = _labels(cfg)
    if labels is not None:
        where["labels"] = CONFIG
    channels = cfg.get("num_channels") if cfg.get("num_channels") in (1, 3) else None
    return Hints(size, mean, std, resize, labels, channels, where)


def preprocess(cfg: InputCfg, name: str, channels: int, height: int, width: int,
               mean: Sequence[float], std: Sequence[float], where: str,
               zeros: dict[str, ZeroInput] | None = None, resize: str | None = None,
               origin: dict[str, str] | None = None) -> Preprocess:
    """The recipe's `input:` section checked against the graph input `[channels, height,
    width]` (`where` names it in errors); `mean`/`std`/`resize` are the defaults, which
    `origin` says the source of (`Preprocess.origin`; a recipe value overrides both)."""
    if cfg.channels is not None and cfg.channels != channels:
        raise SourceError(f"input.channels={cfg.channels} does not match {where}, which takes "
                          f"{channels} channel{'s' * (channels > 1)}; set input.channels="
                          f"{channels} or leave it out")
    got = {"image_size": "default", "mean": "default", "std": "default", "resize": "default",
           **(origin or {})}
    got.update({k: "recipe" for k in ("mean", "std", "resize") if getattr(cfg, k) is not None})
    return Preprocess(name=name, channels=channels, height=height, width=width,
                      resize=cfg.resize or resize or "crop",  # type: ignore[arg-type]
                      mean=_stat(cfg.mean, mean, channels, "mean", where),
                      std=_stat(cfg.std, std, channels, "std", where),
                      zero_inputs=dict(zeros or {}), origin=got)


__all__ = ["CONFIG", "PREPROCESSOR", "Hints", "image_dims", "pick_image_input", "preprocess",
           "read_hints", "real_inputs", "zero_inputs"]
