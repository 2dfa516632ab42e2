"""VisionZip: keep K visual tokens before the language model — the dominant ones by
the vision tower's CLS attention, plus a few contextual tokens that merge the rest by
key similarity (Yang et al., 2024; read from the authors' reference code,
dvlab-research/VisionZip ``clip_encoder.py`` / ``utils.py``).

Recipe section::

    visionzip:
      dominant: 54      # tokens kept by their score, the protected (CLS) token among them
      contextual: 10    # tokens that each average a group of the rest (0: FoPru's rank)
      # keep: 0.25      # or a fraction of the visual tokens reaching the cut: K =
      #                 # round(keep · T), split dominant:contextual as the two above

What the reference code does, and vtc with it (T tokens, the first P protected: CLIP's
CLS, P = 1; a tower without CLS such as Qwen2.5-VL's, P = 0):

1. **dominant**: rank the T - P unprotected tokens by the family's score (the reference
   code's: the feature layer's attention summed over heads, CLS row; a tower without
   CLS gives its own, `vtc.methods.cut.TowerOutput`), keep the P protected tokens and
   the ``dominant - P`` best, **in their original order**;
2. **contextual**: the ``T - dominant`` remaining tokens, in order, with the scoring
   layer's keys averaged over heads and L2-normalised; every
   ``step = max(1, R // contextual)``-th of them (the first ``contextual`` such) is a
   target; every other remaining token joins the target whose key is most similar (dot
   product), and each target becomes the mean of itself and the tokens that joined it;
3. output ``[dominant tokens, contextual tokens]``: ``[B, dominant + contextual, C]``,
   and the index of each (a contextual token takes its target's).

The reference runs this on the vision tower's features before the projector (a
per-token MLP), so vtc does too: the projector then runs on K tokens, and the language
model reads ``[B, K, D]``. Selection commutes with the projector; the contextual
average does not, which is why the order matters.

Graph (traced from `select`; no scatter, TopK with constant K)::

    score[B,T-P] ─► TopK(dominant-P) ─► +P ─► ∪{0..P-1} ─► sort
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
from vtc.methods.cut import CutConfig, CutStep, TowerOutput, VisualCut
from vtc.methods.registry import register

if TYPE_CHECKING:
    from torch import Tensor


class VisionZipConfig(CutConfig):
    dominant: int = 54
    contextual: int = 10
    keep: float | None = None  # a fraction of the visual tokens, split as dominant:contextual

    @field_validator("dominant")
    @classmethod
    def _dominant(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"visionzip.dominant is {v}; it counts the CLS token, so give ≥ 1")
        return v

    @field_validator("keep")
    @classmethod
    def _keep(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"visionzip.keep is {v}; give a fraction in (0, 1]")
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


def split(cfg: VisionZipConfig, visual: int) -> tuple[int, int]:
    """(dominant, contextual) of the section when `visual` tokens reach the cut: as given,
    or with `keep` K = round(keep · visual) split in the section's proportions."""
    if cfg.keep is None:
        return cfg.dominant, cfg.contextual
    k = max(1, round(cfg.keep * visual))
    ctx = round(k * cfg.contextual / (cfg.dominant + cfg.contextual))
    ctx = min(ctx, k - 1)
    return k - ctx, ctx


def select(features: Tensor, score: Tensor, keys: Tensor, dominant: int, contextual: int,
           protected: int = 1) -> tuple[Tensor, Tensor]:
    """VisionZip's tokens (module docstring).

    features `[B, T, C]` (the `protected` tokens first), score `[B, T - protected]`,
    keys `[B, T, D]` (the scoring layer's keys averaged over heads) →
    (`[B, dominant + contextual, C]`, their indices `[B, dominant + contextual]` int64).
    """
    import torch

    b, t, _ = features.shape
    top = torch.topk(score, dominant - protected, dim=-1).indices + protected
    if protected:  # (no empty tensor in the graph when there is none)
        kept = torch.arange(protected, dtype=top.dtype, device=top.device)[None]
        top = torch.cat([kept.expand(b, protected), top], dim=1)
    dom_idx = top.sort(dim=1).values
    dom = _gather(features, dom_idx)
    if contextual == 0:
        return dom, dom_idx
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
    return torch.cat([dom, merged], dim=1), torch.cat([dom_idx, rest_idx[:, tgt_i]], dim=1)


@register
class VisionZip(VisualCut):
    """Dominant + contextual visual tokens between the vision tower and the LM."""

    name = "visionzip"
    config = VisionZipConfig
    summary = "VisionZip: dominant tokens by CLS attention + contextual merges (VLMs)"
    recipe = "llava-visionzip64"
    site: ClassVar[str] = "projector"

    def tokens_after(self, cfg: MethodConfig, visual: int) -> int:
        """`visual` counts the tower's tokens, a CLS token included (T)."""
        assert isinstance(cfg, VisionZipConfig)
        dominant, contextual = split(cfg, visual)
        if dominant > visual:
            raise BudgetError(f"visionzip.dominant is {dominant} but the vision tower "
                              f"gives {visual} tokens (CLS included); lower it")
        rest = visual - dominant
        if contextual > rest:
            raise BudgetError(f"visionzip.contextual is {contextual} but only {rest} "
                              f"tokens remain after {dominant} dominant ones; lower it")
        return dominant + contextual

    def plan_cut(self, cfg: MethodConfig, visual: int, lm_layers: int) -> CutStep:
        assert isinstance(cfg, VisionZipConfig)
        dominant, contextual = split(cfg, visual)
        return CutStep(self.name, self.site, visual, self.tokens_after(cfg, visual), None,
                       {"dominant": dominant, "contextual": contextual})

    def tower(self, step: CutStep, out: TowerOutput) -> tuple[Tensor, Tensor]:
        if step.params["dominant"] < out.protected:
            raise BudgetError(f"visionzip.dominant is {step.params['dominant']}; it counts "
                              f"the tower's {out.protected} protected token(s): raise it")
        return select(out.features, out.score, out.keys, step.params["dominant"],
                      step.params["contextual"], out.protected)
