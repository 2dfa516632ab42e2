"""Tiny seeded ViT-like encoders built from PyTorch's own attention modules
(`nn.MultiheadAttention`, `nn.TransformerEncoderLayer`), as third-party image-to-text
models build them: 3×32×32 input, patch 8 (16 patches), an optional CLS token, and
the token sequence `[B, N, C]` as the graph's output (an encoder a decoder reads)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DIM, HEADS, DEPTH, IMAGE, PATCH = 32, 4, 3, 32, 8


@dataclass(frozen=True)
class Spec:
    kind: str  # "mha" (nn.MultiheadAttention blocks) | "tel" (nn.TransformerEncoderLayer)
    batch_first: bool
    cls: bool = True
    need_weights: bool = False  # mha: ask for the (head-averaged) attention weights too
    norm_first: bool = True  # tel: pre-norm (True) or post-norm (False)
    channels: int = 3
    height: int = IMAGE
    width: int = IMAGE
    dim: int = DIM
    heads: int = HEADS
    depth: int = DEPTH


SPECS = {
    "mha-bf": Spec("mha", batch_first=True),
    "mha-sf-weights": Spec("mha", batch_first=False, need_weights=True),
    "tel-pre-bf-nocls": Spec("tel", batch_first=True, cls=False),
    "tel-post-sf": Spec("tel", batch_first=False, norm_first=False),
    # the image-to-text encoder in small: gray, non-square (16×64 → 2×8 patches), no CLS
    "mha-gray-wide": Spec("mha", batch_first=True, cls=False, channels=1, height=16, width=64),
}


class MHABlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)); packed in_proj."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        d = spec.dim
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, spec.heads, batch_first=spec.batch_first)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d if d > DIM else 2 * d), nn.GELU(),
                                 nn.Linear(4 * d if d > DIM else 2 * d, d))
        self.need_weights = spec.need_weights

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=self.need_weights, attn_mask=mask)[0]
        return x + self.mlp(self.n2(x))


class Encoder(nn.Module):
    """pixels `[B, C_in, H, W]` (default 3×32×32) → tokens `[B, N, C]` (N = H·W/64, plus
    one with a CLS token)."""

    def __init__(self, spec: Spec, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.spec = spec
        d = spec.dim
        self.patch = nn.Conv2d(spec.channels, d, PATCH, PATCH)
        n = (spec.height // PATCH) * (spec.width // PATCH) + spec.cls
        self.cls = nn.Parameter(torch.randn(1, 1, d)) if spec.cls else None
        self.pos = nn.Parameter(torch.randn(1, n, d) * 0.5)
        self.blocks = nn.ModuleList(
            MHABlock(spec) if spec.kind == "mha" else nn.TransformerEncoderLayer(
                d, spec.heads, 2 * d, dropout=0.0, batch_first=spec.batch_first,
                norm_first=spec.norm_first)
            for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d)
        with torch.no_grad():  # random LayerNorm affines and biases: no exporter folds them
            for p in self.parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.2)
        self.eval()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1)
        return t + self.pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        if not self.spec.batch_first:
            t = t.transpose(0, 1)
        for blk in self.blocks:
            t = blk(t)
        if not self.spec.batch_first:
            t = t.transpose(0, 1)
        return self.norm(t)


def export(model: Encoder, path: Path, batch: int, dynamo: bool) -> Path:
    """Static-shape export; dynamo writes the weights to `path.data` (its default)."""
    s = model.spec
    x = torch.randn(batch, s.channels, s.height, s.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, opset_version=18 if dynamo
                          else 17, input_names=["pixel_values"], output_names=["tokens"],
                          verbose=False)
    return path
