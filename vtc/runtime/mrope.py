"""Qwen2.5-VL's inputs without torch: the image processor's patches and the 3-D (M-RoPE)
positions, for a bundle built at one image size (`vtc.runtime.generate`).

Patches (as transformers' Qwen2-VL image processor): the image is resized (bicubic) to
the bundle's size, scaled to [0, 1] and normalised, then cut into ``p × p`` patches laid
out merge group by merge group (the 2 × 2 patches of one LLM token in a row), each
repeated over the temporal patch::

    [H, W, 3] ─► [H/p/m, m, p, W/p/m, m, p, 3] ─► (group row, group col, m, m, 3, T, p, p)
              ─► pixel_values[(H/p)·(W/p), 3·T·p·p]

The size an image would get is Qwen's `smart_resize` (multiples of p·m, pixels within
[min_pixels, max_pixels], aspect kept). A bundle's graphs are static, so an image whose
size maps to another grid is refused (`check_size`), naming the built size and the
rebuild; `fit=True` (the validation's photos) resizes to the built size instead.

Positions (as transformers' ``get_rope_index`` and onnxruntime-genai's Qwen2-VL position
inputs): text before the image at t = h = w = 0..s-1; the image's merged token at raster
index i of the H' × W' grid at (s, s + i // W', s + i % W'); the text after it from
s + max(H', W') on, one per token, and each new token one past the last. After a cut
before the language model the kept tokens keep their own positions (`visual_positions`:
the raster index of each kept token, from the vision graph).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from vtc.runtime import BundleError, fit


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int
                 ) -> tuple[int, int]:
    """Qwen2-VL's image processor's target size for an image of height × width."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def check_size(width: int, height: int, proc: dict[str, Any], where: str) -> None:
    """BundleError (module docstring) when an image of width × height px maps to another
    grid than the bundle's."""
    bh, bw = proc["image_size"]
    unit = proc["patch"] * proc["merge"]
    h, w = smart_resize(height, width, unit, proc["min_pixels"], proc["max_pixels"])
    if (h, w) != (bh, bw):
        raise BundleError(
            f"{where}: a {width}×{height} px image resizes to {w}×{h} px for Qwen2.5-VL, "
            f"{(h // unit) * (w // unit)} merged visual tokens, but this bundle was built for "
            f"{bw}×{bh} px ({(bh // unit) * (bw // unit)} merged tokens; the visual budget is "
            f"fixed per bundle): resize the image to {bw}×{bh}, or rebuild the bundle for "
            f"this size with vtc-export … --set generate.image_size=[{h},{w}]")


def patches(image: Image.Image, proc: dict[str, Any], fit_size: bool, where: str
            ) -> np.ndarray:
    """An RGB image → ``pixel_values[N, 3·T·p·p]`` float32 (module docstring)."""
    bh, bw = proc["image_size"]
    if not fit_size:
        check_size(image.size[0], image.size[1], proc, where)
    arr = fit(image, bh, bw, "stretch", 3)                      # [H, W, 3] in [0, 1]
    arr = (arr - np.asarray(proc["mean"], np.float32)) / np.asarray(proc["std"], np.float32)
    p, m, t = proc["patch"], proc["merge"], proc["temporal_patch"]
    gh, gw = bh // p, bw // p
    x = arr.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, 3 * t * p * p), dtype=np.float32)


def grid(proc: dict[str, Any]) -> tuple[int, int]:
    """The merged grid (H', W') of the bundle's image size."""
    unit = proc["patch"] * proc["merge"]
    return proc["image_size"][0] // unit, proc["image_size"][1] // unit


def positions(length: int, start: int, visual_positions: np.ndarray,
              merged: tuple[int, int]) -> tuple[np.ndarray, int]:
    """``position_ids[3, 1, length]`` int64 of a prompt whose K visual tokens sit at
    ``[start, start + K)`` with raster indices `visual_positions` ``[K]`` on the merged
    grid (H', W'), and the next token's position (module docstring)."""
    k = len(visual_positions)
    pos = np.empty((3, 1, length), np.int64)
    pos[:, 0, :start] = np.arange(start)
    idx = np.asarray(visual_positions, np.int64)
    pos[0, 0, start:start + k] = start
    pos[1, 0, start:start + k] = start + idx // merged[1]
    pos[2, 0, start:start + k] = start + idx % merged[1]
    after = length - start - k
    first = start + max(merged)
    pos[:, 0, start + k:] = np.arange(first, first + after)
    return pos, first + after
