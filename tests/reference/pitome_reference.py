"""Independent PiToMe reference for Hugging Face (transformers 5) ViT models.

PiToMe — "Accelerating Transformers with Spectrum-Preserving Token Merging" (Tran et al.,
NeurIPS 2024). This module re-implements the variant of the authors' code
(``hchautran/PiToMe``) named as the reference in the project's research note: the
protected-token path ``pitome()`` + ``merge_wavg`` of ``algo/pitome/merge.py @ 01b65c37``
with its energy ``mean_j ELU(cos - m, alpha)``, used in every block (no ``pitome_bsm``
blocks), wired into the block as ``algo/pitome/patch/timm.py @ 01b65c37`` does, with a
*static* r per block instead of the reference's keep ratio. It is written from the
algorithm, not copied, and it imports nothing from the project package ``vtc``: it is the
oracle that the project's own ONNX rewrite is tested against. The HF forward is recomputed
by hand from the model's own submodules with the helpers of
:mod:`tests.reference.tome_reference` (attention with proportional attention, MLP,
layernorms, output head), which are themselves checked against the HF forward there.

Per block (``B`` = batch, ``N`` = current token count, ``C`` = hidden size, ``H`` = heads,
``D = C / H`` = head dim, ``P = 1`` protected leading token (CLS), ``T = N - P``)::

    x: [B, N, C]
    a, k   = attention(layernorm_before(x), size)   # a: [B, N, C]; keys k: [B, H, N, D]
    metric = k.mean(heads)                          # [B, N, D]
    x      = x + a
    x, size = pitome_merge(x, size, metric, r, m_i, alpha)          # N -> N - r
    x      = x + mlp(layernorm_after(x))

and the merge itself (:func:`pitome_match` + :meth:`PiToMeMatching.merge`)::

    v      = F.normalize(metric[:, P:])             # [B, T, D]
    S      = v @ v^T                                # [B, T, T] cosine, diagonal included
    E      = ELU(S - m_i, alpha).mean(-1)           # [B, T] energy
    order  = argsort(E, descending)                 # ties: lower index first (stable)
    A      = order[:, 0:2r:2]   (ranks 0, 2, ..., 2r-2)          # [B, r]
    Bset   = order[:, 1:2r:2]   (ranks 1, 3, ..., 2r-1)          # [B, r]
    keep   = order[:, 2r:]      (energy-descending order)        # [B, T - 2r]
    dst    = argmax_j S[A_i, Bset_j]   (first maximum on ties)   # [B, r]
    out    = [x[:, :P], x[keep], x[Bset] + sum of the x[A] that chose it]  (on x*size and
             on size, then divided: a size-weighted average)

The margin of block ``i`` of ``L`` blocks is ``m_i = m0 - m0 * (i / L)`` (``m0 = 0.9``), the
reference's ``.9 - .9*(i/num_layers)``; ``alpha = 1``. Proportional attention adds
``log(size)`` ([B, 1, 1, N]) to the scaled logits on the key axis, from the block after the
first merge on, when ``prop_attn`` is on (default True, as the reference's
``patch/deit.py @ f296eb4``).

Ambiguities resolved (each documented where it is implemented):

* **Energy ties.** The reference sorts with ``torch.argsort(descending=True)``, which is not
  stable. This oracle uses a stable descending sort: equal energies rank the lower token
  index first (this is also what ONNX ``TopK`` does). With distinct energies the result is
  identical.
* **Matching ties.** ``argmax`` over the B set returns the first (lowest B-rank) maximum,
  as the reference's ``max(dim=-1)``.
* **Static r.** The reference derives r from a keep ratio; here r is given per block and
  clipped to ``T // 2`` (``T = N - P``) so that ``2r <= T``, as a static schedule would.
* **r = 0.** A block with (clipped) r = 0 does nothing: no merge, no reordering, sizes
  untouched (still None before the first merge). The reference, when its ratio rounds to
  r = 0, would still reorder the non-CLS tokens by energy — a permutation that cannot
  change a ViT's output — so this choice changes no logits.
* **Scores** for the matching are gathered from the full ``S`` (not recomputed from the
  A/B vectors), as the reference does; this matters only in the last bit.
* **Only ViT.** The reference protects only index 0, so a DeiT distillation token would be
  merged like a patch token; this oracle rejects models with a distillation token.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tests.reference.tome_reference import _attention, _backbone, _head, _layer_norm, _mlp

__all__ = [
    "PiToMeBlockTrace",
    "PiToMeMatching",
    "block_margins",
    "parse_schedule",
    "pitome_forward",
    "pitome_match",
    "pitome_merge",
]


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


def block_margins(num_layers: int, margin: float = 0.9) -> list[float]:
    """Per-block energy margins ``m_i = m0 - m0 * (i / L)`` for ``i = 0 .. L-1``.

    This is the reference's ``[.9 - .9*(i/num_layers) for i in range(num_layers)]`` with
    ``m0 = margin``, evaluated in Python floats in the same order (it equals
    ``m0 * (1 - i / L)`` up to float64 rounding).
    """
    return [margin - margin * (i / num_layers) for i in range(num_layers)]


def parse_schedule(num_layers: int, r: int | Sequence[int]) -> list[int]:
    """One requested r per block.

    Args:
        num_layers: number of transformer blocks L.
        r: an ``int`` (the same r in every block) or a per-block sequence, padded with zeros
            when shorter than L.

    Returns:
        L non-negative ints; each is still clipped per block by :func:`pitome_match`.

    Raises:
        ValueError: a negative r, or a sequence longer than L.
    """
    if isinstance(r, Sequence):
        values = [operator.index(v) for v in cast(Sequence[int], r)]
        if len(values) > num_layers:
            raise ValueError(f"r schedule has {len(values)} entries for {num_layers} blocks")
        values += [0] * (num_layers - len(values))
    else:
        values = [operator.index(r)] * num_layers
    if any(v < 0 for v in values):
        raise ValueError(f"r must be non-negative, got {values}")
    return values


# --------------------------------------------------------------------------------------
# Energy-ordered matching and size-weighted merge (merge.py: pitome, merge_wavg)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiToMeMatching:
    """The outcome of one PiToMe matching step (indices are into the non-protected tokens).

    Attributes:
        r: tokens removed (after clipping); 0 means "do nothing".
        protected: P, the number of leading tokens left out of the metric and kept first.
        margin: the energy margin m used.
        alpha: the ELU alpha used.
        energy: [B, T] float, ``mean_j ELU(S_ij - m, alpha)`` with ``T = N - P``.
        order: [B, T] int64, token indices by descending energy (ties: lower index first).
        a_idx: [B, r] int64, the candidates at even energy ranks 0, 2, ..., 2r-2 (merged away).
        b_idx: [B, r] int64, the candidates at odd energy ranks 1, 3, ..., 2r-1 (kept, and
            receiving the A tokens).
        keep_idx: [B, T - 2r] int64, the protected (non-candidate) tokens in energy order.
        dst_idx: [B, r] int64, for each A token the position in ``b_idx`` (0..r-1) it
            merges into: the first argmax of its cosine similarity to the B tokens.
    """

    r: int
    protected: int
    margin: float
    alpha: float
    energy: torch.Tensor
    order: torch.Tensor
    a_idx: torch.Tensor
    b_idx: torch.Tensor
    keep_idx: torch.Tensor
    dst_idx: torch.Tensor

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Sum-merge ``x`` [B, N, c] → [B, N - r, c] (the reference's ``merge(x, "sum")``).

        Output order: ``[x[:, :P], x[keep_idx] (energy order), x[b_idx] (rank order)]``.
        Each B row holds its own value plus the sum of the A rows that chose it
        (``scatter_reduce`` ``"sum"`` with ``include_self``). With r = 0, ``x`` is returned
        unchanged (no reordering).
        """
        if self.r == 0:
            return x
        n, _, c = x.shape
        head, rest = x[:, : self.protected], x[:, self.protected :]

        def take(idx: torch.Tensor) -> torch.Tensor:  # [B, k] -> [B, k, c]
            return rest.gather(1, idx.unsqueeze(-1).expand(n, idx.shape[1], c))

        kept, src, dst = take(self.keep_idx), take(self.a_idx), take(self.b_idx)
        index = self.dst_idx.unsqueeze(-1).expand(n, self.r, c)
        dst = dst.scatter_reduce(1, index, src, reduce="sum", include_self=True)
        return torch.cat([head, kept, dst], dim=1)


def pitome_match(
    metric: torch.Tensor,
    r: int,
    margin: float,
    alpha: float = 1.0,
    protected: int = 1,
) -> PiToMeMatching:
    """Energy-ordered matching of PiToMe (the reference's ``pitome_vision`` + ``pitome``).

    Args:
        metric: [B, N, D] similarity features (this block's keys averaged over heads).
        r: requested number of tokens to remove; clipped to ``(N - protected) // 2``.
        margin: the energy margin m of this block.
        alpha: the ELU alpha (1.0 in the paper and the reference).
        protected: P leading tokens (CLS) excluded from the metric and never merged.

    Returns:
        A :class:`PiToMeMatching`. Ties in energy rank the lower token index first (stable
        sort); ties in the matching pick the lowest B rank.

    Raises:
        ValueError: a negative r or protected count, or more protected tokens than N.
    """
    if r < 0 or protected < 0:
        raise ValueError(f"r and protected must be non-negative, got r={r}, P={protected}")
    n_b, n_t, _ = metric.shape
    if protected > n_t:
        raise ValueError(f"{protected} protected tokens but only {n_t} tokens")
    t = n_t - protected
    r = min(r, t // 2)

    with torch.no_grad():
        v = F.normalize(metric[:, protected:, :], p=2, dim=-1)  # [B, T, D]
        sim = v @ v.transpose(-1, -2)  # [B, T, T], cosine similarity incl. diagonal
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)  # [B, T]
        order = torch.sort(energy, dim=-1, descending=True, stable=True).indices  # [B, T]
        candidates = order[:, : 2 * r]
        a_idx, b_idx = candidates[:, 0::2], candidates[:, 1::2]  # [B, r] each
        keep_idx = order[:, 2 * r :]  # [B, T - 2r]
        rows = sim.gather(1, a_idx.unsqueeze(-1).expand(n_b, r, t))  # [B, r, T]
        scores = rows.gather(2, b_idx.unsqueeze(1).expand(n_b, r, r))  # [B, r, r]
        if r > 0:
            dst_idx = scores.argmax(dim=-1)  # [B, r]; first maximum on ties
        else:  # argmax cannot reduce an empty axis
            dst_idx = torch.zeros(n_b, 0, dtype=torch.long, device=metric.device)
    return PiToMeMatching(
        r, protected, float(margin), float(alpha), energy, order, a_idx, b_idx, keep_idx, dst_idx
    )


def merge_wavg(
    matching: PiToMeMatching, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge, as the reference's ``merge_wavg``.

    Args:
        matching: the matching for this block.
        x: [B, N, C] residual stream.
        size: [B, N, 1] token sizes, or None for all ones.

    Returns:
        ``(merge(x * size) / merge(size), merge(size))``, shapes [B, N - r, C] and
        [B, N - r, 1]. Every row goes through the multiply and the divide, as the reference.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = matching.merge(x * size)
    size = matching.merge(size)
    return x / size, size


def pitome_merge(
    x: torch.Tensor,
    size: torch.Tensor | None,
    metric: torch.Tensor,
    r: int,
    margin: float,
    alpha: float = 1.0,
    protected: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PiToMe merge: :func:`pitome_match` on ``metric``, then :func:`merge_wavg`.

    Args:
        x: [B, N, C] tokens (the residual stream after the attention residual add).
        size: [B, N, 1] token sizes, or None for all ones.
        metric: [B, N, D] similarity features.
        r: requested tokens to remove, clipped to ``(N - protected) // 2``.
        margin: energy margin m.
        alpha: ELU alpha.
        protected: P leading tokens kept first and never merged.

    Returns:
        ``(x', size')`` of shapes [B, N - r, C] and [B, N - r, 1], in the order
        ``[protected P, non-candidates by descending energy, B tokens by energy rank]``.
        With (clipped) r = 0: ``x`` unchanged and ``size`` (ones when None).
    """
    return merge_wavg(pitome_match(metric, r, margin, alpha, protected), x, size)


# --------------------------------------------------------------------------------------
# Forward pass of a PiToMe-patched HF ViT
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiToMeBlockTrace:
    """What one block did.

    Attributes:
        tokens_in: token count N entering the block.
        r_requested: r from the schedule for this block.
        r: tokens actually removed (after clipping; 0 when the block did not merge).
        tokens_out: token count leaving the block (``tokens_in - r``).
        margin: this block's energy margin ``m_i``.
        matching: the block's :class:`PiToMeMatching`, or None when r_requested is 0.
        size: [B, tokens_out, 1] token sizes after the block, or None while no merge has
            happened yet.
        hidden: [B, tokens_out, C] the residual stream leaving the block.
    """

    tokens_in: int
    r_requested: int
    r: int
    tokens_out: int
    margin: float
    matching: PiToMeMatching | None
    size: torch.Tensor | None
    hidden: torch.Tensor


@torch.no_grad()
def pitome_forward(
    model: nn.Module,
    pixel_values: torch.Tensor,
    r: int | list[int],
    margin: float = 0.9,
    alpha: float = 1.0,
    prop_attn: bool = True,
    trace: list[PiToMeBlockTrace] | None = None,
) -> dict[str, torch.Tensor]:
    """Forward pass of an HF ViT with PiToMe applied as the reference code does.

    Args:
        model: a transformers 5 ``ViTForImageClassification`` or ``ViTModel`` in eval mode
            (float32).
        pixel_values: [B, 3, H, W] at the model's configured image size.
        r: tokens to remove per block: an int (the same r in every block) or a per-block
            list (padded with zeros); each clipped per block to ``(N - 1) // 2``.
        margin: m0 of the margin schedule ``m_i = m0 - m0 * (i / L)``.
        alpha: the ELU alpha of the energy.
        prop_attn: add ``log(size)`` to the attention logits once sizes exist.
        trace: if given, one :class:`PiToMeBlockTrace` per block is appended to it.

    Returns:
        ``{"logits": [B, num_labels]}`` for ``ViTForImageClassification``;
        ``{"pooler_output": [B, C]}`` for ``ViTModel`` (the pooler on token 0, or token 0
        itself when the model has no pooler).

    Raises:
        ValueError: the model is in training mode, or the schedule is invalid.
        TypeError: the model has a distillation token (DeiT) or no CLS token.
    """
    if model.training:
        raise ValueError("pitome_forward reproduces inference only; call model.eval() first")
    backbone = _backbone(model)
    embeddings: Any = backbone.embeddings
    if getattr(embeddings, "distillation_token", None) is not None:
        raise TypeError("pitome_forward supports ViT only (no distillation token)")
    if getattr(embeddings, "cls_token", None) is None:
        raise TypeError("pitome_forward expects a CLS token at index 0")
    layers = list(backbone.layers)
    schedule = parse_schedule(len(layers), r)
    margins = block_margins(len(layers), margin)

    pixel_values = pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype)
    x = embeddings(pixel_values)  # [B, N0, C]
    size: torch.Tensor | None = None

    for layer, r_block, m_block in zip(layers, schedule, margins, strict=True):
        tokens_in = x.shape[1]
        attn_out, metric = _attention(
            layer, _layer_norm(layer.layernorm_before, x), size if prop_attn else None
        )
        x = x + attn_out
        matching: PiToMeMatching | None = None
        if r_block > 0:
            matching = pitome_match(metric, r_block, m_block, alpha, protected=1)
            if matching.r > 0:
                x, size = merge_wavg(matching, x, size)
        x = x + _mlp(layer, _layer_norm(layer.layernorm_after, x))
        if trace is not None:
            removed = 0 if matching is None else matching.r
            trace.append(
                PiToMeBlockTrace(
                    tokens_in, r_block, removed, x.shape[1], m_block, matching, size, x
                )
            )

    seq = _layer_norm(backbone.layernorm, x)
    return _head(model, backbone, seq)
