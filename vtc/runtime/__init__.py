"""vtc.runtime: run a vtc bundle with onnxruntime, numpy and Pillow only (no torch, no
transformers, no pydantic) — what an edge device installs.

    from vtc.runtime import Bundle
    b = Bundle.load("out/")                       # preprocess.json + manifest.json
    x = b.preprocess(Image.open("cat.jpg"))       # float32 [C, H, W], normalised
    outs = b.run([x, x2, x3])                     # name -> [3, ...] (batch padded inside)

`preprocess` reproduces `vtc.data.images.fit` + `normalize` (the preprocessing the
bundle was validated with): gray (PIL luma) or RGB, 16-bit gray scaled to 8 bits,
`crop` | `pad` | `stretch` with bicubic resampling, pixels / 255, (x - mean) / std.
A bundle built for a static batch B runs in batches of B; the last one is padded with
repeats of the first images and only the real rows are returned.

This package imports nothing else of vtc (layer 0); `trt_check.py` beside it is the
bundle's standalone trt/check.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Bundle", "BundleError", "fit"]


class BundleError(ValueError):
    """A bundle that cannot be loaded or run (the message names the fix)."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit gray → 8 bits by scaling, never clipping (as vtc.data.images)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    return img


def fit(img: Image.Image, height: int, width: int, resize: str, channels: int) -> np.ndarray:
    """One image → float32 `[height, width, channels]` in [0, 1] (module docstring)."""
    h, w = height, width
    img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    iw, ih = img.size
    bicubic = Image.Resampling.BICUBIC
    if resize == "stretch":
        img = img.resize((w, h), bicubic)
    elif resize == "crop":
        th, tw = round(h * 256 / 224), round(w * 256 / 224)
        s = max(tw / iw, th / ih)
        nw, nh = max(tw, round(iw * s)), max(th, round(ih * s))
        img = img.resize((nw, nh), bicubic)
        left, top = round((nw - w) / 2.0), round((nh - h) / 2.0)
        img = img.crop((left, top, left + w, top + h))
    elif resize == "pad":
        s = min(w / iw, h / ih)
        nw, nh = min(w, max(1, round(iw * s))), min(h, max(1, round(ih * s)))
        canvas = Image.new(img.mode, (w, h), 0)
        canvas.paste(img.resize((nw, nh), bicubic), ((w - nw) // 2, (h - nh) // 2))
        img = canvas
    else:
        raise BundleError(f"resize {resize!r} is not crop, pad or stretch")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def to_input(image: Image.Image | str | Path, height: int, width: int, resize: str,
             channels: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """An image (or its file) → float32 `[C, H, W]`: `fit`, then (x - mean) / std."""
    if isinstance(image, str | Path):
        with Image.open(image) as img:
            return to_input(img, height, width, resize, channels, mean, std)
    arr = fit(image, height, width, resize, channels)
    out = (arr - mean.reshape(1, 1, -1)) / std.reshape(1, 1, -1)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


@dataclass
class Bundle:
    """A loaded bundle: its preprocessing, the ONNX Runtime session and the batch."""

    path: Path
    name: str  # the image input
    channels: int
    height: int
    width: int
    resize: str
    mean: np.ndarray  # float32 [C]
    std: np.ndarray  # float32 [C]
    zero_inputs: dict[str, tuple[list[int], str]]
    batch: int | None  # the static batch; None when the graph takes any batch
    session: Any  # onnxruntime.InferenceSession
    graph: str

    @classmethod
    def load(cls, path: str | Path, providers: Sequence[str] | None = None,
             graph: str = "model.onnx") -> Bundle:
        """Read preprocess.json and manifest.json of the bundle at `path` and open
        `graph` (model.onnx, portable; or model.ort.onnx, optimised for the CPU it was
        built on) with `providers` (default: onnxruntime's CPU provider)."""
        import onnxruntime as ort

        path = Path(path)
        try:
            pre = json.loads((path / "preprocess.json").read_text())
            man = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: not a vtc bundle ({type(exc).__name__}: preprocess."
                              "json and manifest.json are needed); give vtc-export's --out "
                              "directory") from None
        if not (path / graph).is_file():
            raise BundleError(f"{path / graph}: no such file; give --graph model.onnx or "
                              "model.ort.onnx")
        first = man["shapes"]["input"][0]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: stdout/stderr stay one line per image
        session = ort.InferenceSession(str(path / graph), opts,
                                       providers=list(providers or ["CPUExecutionProvider"]))
        return cls(path, pre["name"], int(pre["channels"]), int(pre["height"]),
                   int(pre["width"]), pre["resize"], np.asarray(pre["mean"], np.float32),
                   np.asarray(pre["std"], np.float32),
                   {k: (list(z["shape"]), z["dtype"])
                    for k, z in pre.get("zero_inputs", {}).items()},
                   first if isinstance(first, int) else None, session, graph)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def preprocess(self, image: Image.Image | str | Path) -> np.ndarray:
        """An image (or its file) → float32 `[C, H, W]`, as the bundle was validated."""
        return to_input(image, self.height, self.width, self.resize, self.channels, self.mean,
                        self.std)

    def run(self, images: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed `[C, H, W]` images (or a `[N, C, H, W]` array) → every output,
        `[N, ...]` each; run in the engine's static batch, the last batch padded."""
        x = np.ascontiguousarray(np.stack(list(images)) if not isinstance(images, np.ndarray)
                                 else images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.height, self.width):
            raise BundleError(f"expected [N, {self.channels}, {self.height}, {self.width}] "
                              f"inputs, got {list(x.shape)}; use Bundle.preprocess")
        n = len(x)
        step = self.batch or n
        outs: dict[str, list[np.ndarray]] = {k: [] for k in self.output_names}
        for start in range(0, n, step):
            xb = x[start:start + step]
            real = len(xb)
            if real < step:  # pad with repeats of the first images (cyclically)
                xb = np.concatenate([xb, x[np.arange(step - real) % n]])
            feeds = {self.name: xb}
            feeds.update({k: np.zeros([len(xb), *shape[1:]], dtype=dtype)
                          for k, (shape, dtype) in self.zero_inputs.items()})
            for k, v in zip(self.output_names, self.session.run(None, feeds), strict=True):
                outs[k].append(v[:real])
        return {k: np.concatenate(v) for k, v in outs.items()}
