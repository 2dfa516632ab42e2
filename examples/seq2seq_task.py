"""A worked example of `validate.task`: an encoder–decoder scored on decoded sequences.

The encoder is an ordinary HF ViT (tiny, seeded, random weights) exported to ONNX with
its token sequence `last_hidden_state[B, N, C]` as the output: that graph is what vtc
compresses. The decoder — a one-layer transformer decoder reading the encoder's tokens
through cross-attention — stays in torch, here in the task function: it decodes
greedily from both engines' memories and scores how often the compressed encoder makes
the decoder say the same thing.

    python examples/seq2seq_task.py /tmp/encoder.onnx          # write the encoder
    PYTHONPATH=examples vtc-export /tmp/encoder.onnx --recipe examples/seq2seq.yaml \\
        --out /tmp/seq2seq --batch 2

A real model would load its trained decoder in `decoder()` (e.g. from a
safetensors file next to this module) instead of seeding a random one.
"""

from __future__ import annotations

import sys
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED = 0
IMAGE, PATCH, WIDTH = 32, 8, 64
VOCAB, MAX_LEN, BOS, EOS = 12, 8, 0, 1


def encoder() -> nn.Module:
    """The tiny seeded ViT encoder: pixel_values [B, 3, 32, 32] → tokens [B, 17, 64]."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(SEED)
    cfg = ViTConfig(hidden_size=WIDTH, num_hidden_layers=3, num_attention_heads=4,
                    intermediate_size=128, image_size=IMAGE, patch_size=PATCH)
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # off HF's near-uniform init, so that attention has structure
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


class Decoder(nn.Module):
    """Token decoder: ids [B, T] and memory [B, N, C] (any N) → logits [B, T, VOCAB]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos = nn.Parameter(torch.randn(MAX_LEN + 1, WIDTH) * 0.1)
        layer = nn.TransformerDecoderLayer(WIDTH, 4, 128, dropout=0.0, batch_first=True)
        self.layers = nn.TransformerDecoder(layer, num_layers=1)
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.layers(self.embed(ids) + self.pos[:t], memory, tgt_mask=causal)
        return self.head(h)  # type: ignore[no-any-return]


@cache
def decoder() -> Decoder:
    """The seeded decoder; its weights are pushed off PyTorch's init (std 0.3 noise) so
    that what it decodes depends on the memory (distinct sequences per image)."""
    torch.manual_seed(SEED + 1)
    dec = Decoder().eval()
    gen = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return dec


def greedy(memory: np.ndarray) -> list[list[int]]:
    """Greedy decoding from memory [B, N, C]: one id list per image (EOS excluded)."""
    dec = decoder()
    mem = torch.from_numpy(np.ascontiguousarray(memory, dtype=np.float32))
    ids = torch.full((mem.shape[0], 1), BOS, dtype=torch.long)
    with torch.no_grad():
        for _ in range(MAX_LEN):
            nxt = dec(ids, mem)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    out = []
    for row in ids[:, 1:].tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two id sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def score(inputs: np.ndarray, baseline: dict[str, np.ndarray],
          compressed: dict[str, np.ndarray]) -> dict[str, float]:
    """The task function: decode both engines' token outputs, compare the sequences.

    exact_match: the fraction of images decoded to the same sequence;
    edit_distance: mean Levenshtein distance, normalised by the longer sequence."""
    ref = greedy(baseline["last_hidden_state"])
    got = greedy(compressed["last_hidden_state"])
    exact = [a == b for a, b in zip(ref, got, strict=True)]
    dist = [edit_distance(a, b) / max(len(a), len(b), 1) for a, b in zip(ref, got, strict=True)]
    return {"exact_match": float(np.mean(exact)), "edit_distance": float(np.mean(dist))}


class _Tokens(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values).last_hidden_state  # type: ignore[no-any-return]


def export_encoder(path: Path, batch: int = 2) -> Path:
    """Write the encoder as ONNX: pixel_values [batch, 3, 32, 32] → last_hidden_state."""
    x = torch.randn(batch, 3, IMAGE, IMAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_Tokens(encoder()), (x,), dynamo=True, opset_version=18,
                                 input_names=["pixel_values"],
                                 output_names=["last_hidden_state"], verbose=False)
    assert prog is not None
    prog.save(str(path))
    return path


if __name__ == "__main__":
    print(export_encoder(Path(sys.argv[1] if len(sys.argv) > 1 else "encoder.onnx")))
