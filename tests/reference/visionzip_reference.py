"""Independent reference implementation of VisionZip's feature selection (Yang et al.,
2024, "VisionZip: Longer is Better but Not Necessary in Vision Language Models";
github.com/dvlab-research/VisionZip), written as the authors' code writes it: boolean
masks, masked_select, a scattered one-hot assignment and isin, not vtc's ops. A test
oracle; it imports nothing from ``vtc``.

The caller picks the dominant tokens (``keep``, [B, T] with ``dominant`` True per row:
CLS plus the top CLS-attention tokens with a CLS, the top-scored tokens without); the
rest are merged into ``contextual`` evenly spaced targets by their keys' cosine.
"""

from __future__ import annotations

import torch


def merge(feats: torch.Tensor, metric: torch.Tensor, keep: torch.Tensor, dominant: int,
          contextual: int) -> tuple[torch.Tensor, list[int]]:
    """feats [B, T, C], metric [B, T, D], keep [B, T] bool → (the dominant tokens in
    their original order then the contextual ones, [B, dominant + contextual, C]; the
    original index each output row was taken at, for row 0 of the batch)."""
    b, t, c = feats.shape
    dom = torch.masked_select(feats, keep[..., None]).view(b, dominant, c)
    rest_n = t - dominant
    rest = torch.masked_select(feats, ~keep[..., None]).view(b, rest_n, c)
    rest_pos = torch.arange(t)[~keep[0]]
    m = metric[~keep].view(b, rest_n, -1)
    m = m / m.norm(p=2, dim=-1, keepdim=True)
    step = max(1, rest_n // contextual)
    tgt = torch.arange(0, rest_n, step)[:contextual]
    other = ~torch.isin(torch.arange(rest_n), tgt)
    sim = torch.bmm(m[:, other], m[:, tgt].transpose(1, 2))
    one_hot = torch.zeros(b, int(other.sum()), contextual).scatter_(
        2, sim.argmax(-1, keepdim=True), 1.0)
    counts = 1 + one_hot.sum(dim=1)[..., None]
    ctx = (torch.bmm(one_hot.transpose(1, 2), rest[:, other]) + rest[:, tgt]) / counts
    where = torch.arange(t)[keep[0]].tolist() + rest_pos[tgt].tolist()
    return torch.cat([dom, ctx], dim=1), where
