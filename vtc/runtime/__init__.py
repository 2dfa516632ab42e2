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

`load` checks the sha256 that manifest.json lists for each file it reads (the graph and
its external data; `verify`), so a truncated or altered copy is named in one line
instead of failing inside onnxruntime. Only the files loaded are hashed (about 0.35 s
for 350 MB on a 2-core CI machine).

This package imports no other vtc module but `vtc.errors` (layer 0, stdlib only: the
exit codes and the command guard its two entry points run in); `trt_check.py` beside it
is the bundle's standalone trt/check.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from vtc.errors import InputError, one_line

__all__ = ["ArgParser", "Bundle", "BundleError", "fit", "graph_files", "listed_files",
           "open_session", "verify"]


class BundleError(InputError):
    """A bundle that cannot be loaded or run (the message names the fix): exit 2 in
    `vtc.errors.guard`, which the entry points (`python -m vtc.runtime`,
    `python -m vtc.runtime.generate`, `vtc generate`) run in."""


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors (a missing argument, an unknown option, a value of the
    wrong type) are one line, ``error: MESSAGE (see 'PROG --help')``, and exit 2, as every
    vtc command's are."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"error: {one_line(message)} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def listed_files(manifest: Mapping[str, Any]) -> dict[str, str]:
    """manifest.json's sha256 table: `files` (top-level graphs, engines, their data)
    and `edge` (samples/, trt/), by path relative to the bundle."""
    files, edge = manifest.get("files", {}), manifest.get("edge", {})
    if not isinstance(files, dict) or not isinstance(edge, dict):
        raise BundleError("manifest.json has no sha256 table (files); rebuild the bundle "
                          "with vtc-export")
    return {**files, **edge}


def graph_files(graph: str, listed: Mapping[str, str]) -> list[str]:
    """`graph` and the external-data files the manifest lists beside it
    (`graph.data`, the name vtc writes)."""
    return [graph, *sorted(n for n in listed if n.startswith(f"{graph}."))]


def verify(folder: Path, names: Sequence[str], manifest: Mapping[str, Any]) -> None:
    """Check each of `names` (paths relative to `folder`) against the sha256 manifest.json
    lists for it; BundleError naming the first file that is missing, unlisted or
    corrupt. Only `names` are hashed."""
    listed = listed_files(manifest)
    for name in names:
        p, want = folder / name, listed.get(name)
        if want is None:
            raise BundleError(f"{p}: manifest.json lists no sha256 for it, so it cannot be "
                              "checked; load a file the bundle ships, or rebuild the bundle "
                              "with vtc-export")
        if not p.is_file():
            raise BundleError(f"{p}: no such file, though manifest.json lists it; copy the "
                              "whole bundle folder again")
        got = _sha256(p)
        if got != want:
            raise BundleError(f"{p} is corrupt: its sha256 {got[:12]}… ({p.stat().st_size} "
                              f"bytes) is not the {want[:12]}… manifest.json lists; copy the "
                              "bundle again or rebuild it with vtc-export")


def open_session(path: Path, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session on `path` (errors only logged); BundleError, one line,
    when onnxruntime cannot load it."""
    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    have = ort.get_available_providers()
    unknown = [p for p in providers if p not in have]
    if unknown:
        raise BundleError(f"providers {', '.join(unknown)}: not in this onnxruntime (it has "
                          f"{', '.join(have)}); give one of those, or install onnxruntime-gpu "
                          "for CUDA")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: stdout/stderr stay one line per image
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()  # as vtc's engines read it
    if threads.isdigit() and int(threads) > 0:
        opts.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime's own error types: one line, exit 2
        text = " ".join(str(exc).split())
        raise BundleError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: "
                          f"{text[:240]}); rebuild the bundle, or check --providers") from None


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
        if not isinstance(man, dict) or not isinstance(pre, dict):
            raise BundleError(f"{path}: manifest.json or preprocess.json is not a JSON object; "
                              "rebuild the bundle with vtc-export")
        listed = listed_files(man)
        verify(path, [*graph_files(graph, listed),  # preprocess.json too once it is listed
                      *(["preprocess.json"] if "preprocess.json" in listed else [])], man)
        try:
            first = man["shapes"]["input"][0]
            fields = (pre["name"], int(pre["channels"]), int(pre["height"]), int(pre["width"]),
                      pre["resize"], np.asarray(pre["mean"], np.float32),
                      np.asarray(pre["std"], np.float32),
                      {k: (list(z["shape"]), z["dtype"])
                       for k, z in pre.get("zero_inputs", {}).items()})
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: preprocess.json or manifest.json lacks a field "
                              f"({type(exc).__name__}: {exc}); rebuild the bundle with "
                              "vtc-export") from None
        session = open_session(path / graph, providers)
        return cls(path, *fields, first if isinstance(first, int) else None, session, graph)

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
