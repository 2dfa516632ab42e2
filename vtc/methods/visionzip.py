"""VisionZip: keep K visual tokens before the language model — the dominant ones by
the vision tower's CLS attention, plus a few contextual tokens that merge the rest by
key similarity (Yang et al., 2024; read from the authors' reference code,
dvlab-research/VisionZip ``clip_encoder.py`` / ``utils.py``).

Recipe section::

    visionzip:
      dominant: 54      # tokens kept by CLS attention, the CLS token among them
      contextual: 10    # tokens that each average a group of the rest (0: FoPru's rank)

What the reference code does, and vtc with it (the vision tower's feature layer F, the
layer whose output LLaVA reads, T = 1 + N tokens with CLS first):

1. **dominant**: sum layer F's attention over heads, take the CLS row over the N patch
   tokens, keep CLS and the ``dominant - 1`` patches it attends to most, **in their
   original order**;
2. **contextual**: the ``T - dominant`` remaining tokens, in order, with layer F's keys
   averaged over heads and L2-normalised; every ``step = max(1, R // contextual)``-th of
   them (the first ``contextual`` such) is a target; every other remaining token joins
   the target whose key is most similar (dot product), and each target becomes the mean
   of itself and the tokens that joined it;
3. output ``[dominant tokens, contextual tokens]``: ``[B, dominant + contextual, C]``.

The reference runs this on the vision tower's features before the projector (a
per-token MLP), so vtc does too: the projector then runs on K tokens, and the language
model reads ``[B, K, D]``. Selection commutes with the projector; the contextual
average does not, which is why the order matters.

Graph (traced from `select`; no scatter, TopK with constant K)::

    attn_F[B,H,T,T] ─► ReduceSum(H) ─► row 0, cols 1: ─► TopK(dominant-1) ─► +1 ─► ∪{0} ─► sort
        ─► dom_idx[B,d] ─► GatherElements(features) ─► dominant[B,d,C]
    dom_idx ─► one-hot ─► TopK(smallest of is_dom·T + position) ─► rest_idx[B,R] ─► Gather
        ─► keys normalised ─► MatMul(others, targetsᵀ) ─► ArgMax ─► one-hot A[B,O,c]
        ─► (Aᵀ·others + targets) / (1 + ΣA) ─► contextual[B,c,C]
    Concat(dominant, contextual) ─► projector ─► image_embeds[B,K,D]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from vtc.budget import BudgetError
from vtc.methods.base import MethodConfig
from vtc.methods.cut import CutConfig, CutStep, VisualCut
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor


class VisionZipConfig(CutConfig):
    dominant: int = 54
    contextual: int = 10

    @field_validator("dominant")
    @classmethod
    def _dominant(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"visionzip.dominant is {v}; it counts the CLS token, so give ≥ 1")
        return v

    @field_validator("contextual")
    @classmethod
    def _contextual(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"visionzip.contextual is {v}; give a count ≥ 0")
        return v


def targets(remaining: int, contextual: int) -> tuple[list[int], list[int]]:
    """Positions (among the remaining tokens) of the targets and of the others."""
    step = max(1, remaining // contextual)
    tgt = list(range(0, remaining, step))[:contextual]
    chosen = set(tgt)
    return tgt, [i for i in range(remaining) if i not in chosen]


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx[B, k]`` of ``x[B, T, C]`` → ``[B, k, C]``."""
    import torch

    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))


def select(features: Tensor, attn: Tensor, keys: Tensor, dominant: int,
           contextual: int) -> Tensor:
    """VisionZip's tokens (module docstring).

    features `[B, T, C]` (CLS first), attn `[B, H, T, T]` (layer F's probabilities),
    keys `[B, T, D]` (layer F's keys averaged over heads) → `[B, dominant + contextual, C]`.
    """
    import torch

    b, t, _ = features.shape
    cls_row = attn.sum(dim=1)[:, 0, 1:]                                    # [B, T-1]
    top = torch.topk(cls_row, dominant - 1, dim=-1).indices + 1
    cls = torch.zeros((b, 1), dtype=top.dtype, device=top.device)
    dom_idx = torch.cat([cls, top], dim=1).sort(dim=1).values
    kept = _gather(features, dom_idx)
    if contextual == 0:
        return kept
    pos = torch.arange(t, device=features.device)
    is_dom = (dom_idx[:, :, None] == pos[None, None, :]).any(dim=1)         # [B, T]
    order = is_dom.to(features.dtype) * t + pos.to(features.dtype)[None, :]
    remaining = t - dominant
    rest_idx = torch.topk(order, remaining, dim=-1, largest=False, sorted=True).indices
    rest = _gather(features, rest_idx)
    metric = _gather(keys, rest_idx)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    tgt, oth = targets(remaining, contextual)
    tgt_i = torch.tensor(tgt, dtype=torch.long, device=features.device)
    oth_i = torch.tensor(oth, dtype=torch.long, device=features.device)
    sim = metric[:, oth_i] @ metric[:, tgt_i].transpose(1, 2)              # [B, O, c]
    best = sim.argmax(dim=-1)
    assign = (best[:, :, None] == torch.arange(contextual, device=features.device)
              ).to(features.dtype)                                        # [B, O, c]
    counts = 1 + assign.sum(dim=1)[:, :, None]                             # [B, c, 1]
    merged = (assign.transpose(1, 2) @ rest[:, oth_i] + rest[:, tgt_i]) / counts
    return torch.cat([kept, merged], dim=1)


@register
class VisionZip(VisualCut):
    """Dominant + contextual visual tokens between the vision tower and the LM."""

    name = "visionzip"
    config = VisionZipConfig
    summary = "VisionZip: dominant tokens by CLS attention + contextual merges (VLMs)"
    recipe = "llava-visionzip64"
    site: ClassVar[str] = "projector"

    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        """`visual` counts the tower's tokens with CLS (T)."""
        assert isinstance(cfg, VisionZipConfig)
        if cfg.dominant > visual:
            raise BudgetError(f"visionzip.dominant is {cfg.dominant} but the vision tower "
                              f"gives {visual} tokens (CLS included); lower it")
        rest = visual - cfg.dominant
        if cfg.contextual > rest:
            raise BudgetError(f"visionzip.contextual is {cfg.contextual} but only {rest} "
                              f"tokens remain after {cfg.dominant} dominant ones; lower it")
        return cfg.dominant + cfg.contextual

    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        assert isinstance(cfg, VisionZipConfig)
        return CutStep(self.name, self.site, visual, self.tokens_after(cfg, visual), None,
                       {"dominant": cfg.dominant, "contextual": cfg.contextual})

    def tower(self, step: CutStep, features: Tensor, probs: Tensor, keys: Tensor) -> Tensor:
        return select(features, probs, keys, step.params["dominant"],
                      step.params["contextual"])
