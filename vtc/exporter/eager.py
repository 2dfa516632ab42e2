"""The eager PyTorch reference of docs/algorithms.md.

An implementation independent of the ONNX passes: it recomputes every block
by hand from the HF weights (:class:`~vtc.exporter.registry.BlockParts`) and
applies the budget's reductions after the attention residual add, before the
MLP. Engine parity checks compare the rewritten ONNX graph against it.

Shapes: ``x`` is the residual stream ``[B, N, C]``; ``sizes`` is ``[B, N, 1]``;
keys are ``[B, H, N, D]``; attention probabilities are ``[B, H, N, N]``. The
first ``protected`` tokens are never merged or pruned and stay in front.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from vtc.budget import Budget

from .registry import BlockParts, Family

Fuse = Literal["sum", "mean", "none"]


def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``x[B, N, C]``, ``idx[B, K]`` -> ``x[b, idx[b, k]]`` as ``[B, K, C]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def tome_merge(
    x: Tensor, sizes: Tensor, metric: Tensor, r: int, protected: int
) -> tuple[Tensor, Tensor]:
    """Bipartite soft matching (ToMe) of the unprotected tokens.

    Args:
        x: tokens ``[B, N, C]``.
        sizes: how many original tokens each token stands for, ``[B, N, 1]``.
        metric: the matching metric ``[B, N, D]`` (the block's keys averaged over heads).
        r: tokens to remove, ``0 <= r <= (N - protected) // 2``.
        protected: leading tokens that take no part and stay in front.

    Returns:
        ``(x', sizes')`` of shapes ``[B, N - r, C]`` and ``[B, N - r, 1]``:
        ``concat(protected, unmerged a tokens (ascending), size-weighted b tokens)``.
        ``r == 0`` returns the inputs unchanged.
    """
    n = x.shape[1]
    if not 0 <= r <= (n - protected) // 2:
        raise ValueError(f"ToMe r={r} is outside 0..{(n - protected) // 2} for {n} tokens")
    if r == 0:
        return x, sizes
    m = metric[:, protected:]
    m = m / m.norm(dim=-1, keepdim=True)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(-1, -2)  # [B, Na, Nb]
    node_idx = scores.argmax(dim=-1)  # ties -> lowest index  [B, Na]
    node_max = scores.gather(-1, node_idx.unsqueeze(-1)).squeeze(-1)
    order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
    src = order[:, :r]
    unm = torch.sort(order[:, r:], dim=-1).values
    dst = node_idx.gather(-1, src)

    body, body_s = x[:, protected:], sizes[:, protected:]
    xa, xb = body[:, 0::2], body[:, 1::2]
    sa, sb = body_s[:, 0::2], body_s[:, 1::2]
    weighted = _gather_tokens(xa * sa, src)  # [B, r, C]
    num_b = (xb * sb).scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, x.shape[-1]), weighted)
    size_b = sb.scatter_add(1, dst.unsqueeze(-1), _gather_tokens(sa, src))
    x_out = torch.cat([x[:, :protected], _gather_tokens(xa, unm), num_b / size_b], dim=1)
    s_out = torch.cat([sizes[:, :protected], _gather_tokens(sa, unm), size_b], dim=1)
    return x_out, s_out


def evit_scores(attn: Tensor, protected: int) -> Tensor:
    """EViT token scores ``[B, N - protected]`` from attention probabilities
    ``attn[B, H, N, N]``: attention from the first protected token (CLS),
    averaged over heads; with no protected token, the attention each token
    receives, averaged over heads and queries."""
    if protected >= 1:
        return attn[:, :, 0, protected:].mean(dim=1)
    return attn.mean(dim=(1, 2))


def evit_prune(x: Tensor, attn: Tensor, keep: int, protected: int, fuse: Fuse = "sum") -> Tensor:
    """EViT attentive token keeping.

    Args:
        x: tokens ``[B, N, C]`` (after the attention residual add).
        attn: that block's attention probabilities ``[B, H, N, N]``.
        keep: unprotected tokens to keep (``0 <= keep <= N - protected``).
        protected: leading tokens kept in front untouched.
        fuse: ``"sum"`` adds ``Σ w_j x_j`` over the dropped tokens (``w`` = score),
            ``"mean"`` adds ``Σ w_j x_j / Σ w_j``, ``"none"`` adds nothing.

    Returns:
        ``[B, protected + keep (+ 1), C]``: protected tokens, kept tokens in their
        original order, then the fused token.
    """
    cand = x.shape[1] - protected
    if not 0 <= keep <= cand:
        raise ValueError(f"EViT keep={keep} is outside 0..{cand}")
    if fuse not in ("sum", "mean", "none"):
        raise ValueError(f"EViT fuse={fuse!r} is not one of sum, mean, none")
    score = evit_scores(attn, protected)  # [B, cand]
    # top-k with ties -> lower index first, then back to spatial order
    top = torch.sort(score, dim=-1, descending=True, stable=True).indices[:, :keep]
    idx = torch.sort(top, dim=-1).values
    body = x[:, protected:]
    parts = [x[:, :protected], _gather_tokens(body, idx)]
    if fuse != "none":
        dropped = torch.ones_like(score).scatter(1, idx, 0.0)
        w = (score * dropped).unsqueeze(-1)  # [B, cand, 1]
        fused = (w * body).sum(dim=1, keepdim=True)
        if fuse == "mean":
            fused = fused / w.sum(dim=1, keepdim=True)
        parts.append(fused)
    return torch.cat(parts, dim=1)


def attention(
    parts: BlockParts, h: Tensor, log_sizes: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-head self-attention of the normalised tokens ``h[B, N, C]``.

    ``log_sizes[B, N, 1]`` (proportional attention) is added to the scaled
    logits along the key axis when given. Returns ``(out[B, N, C] after the
    output projection, keys[B, H, N, D], probs[B, H, N, N])``.
    """
    b, n, _ = h.shape

    def heads(t: Tensor) -> Tensor:
        return t.view(b, n, parts.num_heads, -1).transpose(1, 2)

    q, k, v = heads(parts.q(h)), heads(parts.k(h)), heads(parts.v(h))
    logits = (q @ k.transpose(-1, -2)) * parts.scale
    if log_sizes is not None:
        logits = logits + log_sizes[:, None, None, :, 0]
    probs = logits.softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
    return parts.o(out), k, probs


def unmerge(x: Tensor, source: Tensor) -> Tensor:
    """Copy each merged token back to every original position it stands for.

    ``x[B, N', C]``, ``source[B, N', N]`` (non-zero where merged token k holds
    original token i) -> ``[B, N, C]``."""
    return (source > 0).to(x.dtype).transpose(1, 2) @ x


def reference_tokens(
    family: Family, model: nn.Module, pixel_values: Tensor, budget: Budget,
    unmerge_tokens: bool = False,
) -> Tensor:
    """Run the embedding and every block under ``budget``.

    ``pixel_values[B, C, H, W] -> tokens[B, budget.tokens_out, C]`` leaving the
    last block (before the final norm / head); with ``unmerge_tokens``, ToMe's
    merges are undone at the end: ``[B, budget.tokens_in, C]``. The source map
    rides along as extra channels through the same size-weighted merges (an
    average of one-hot rows is non-zero exactly on their union).
    """
    blocks = family.blocks(model)
    if len(blocks) != len(budget.layers):
        raise ValueError(f"budget has {len(budget.layers)} layers, model has {len(blocks)}")
    protected = budget.protected
    if unmerge_tokens and budget.method == "evit":
        raise ValueError("EViT drops tokens: they cannot be unmerged")
    with torch.no_grad():
        x = family.embed(model, pixel_values.float())
        if x.shape[1] != budget.tokens_in:
            raise ValueError(
                f"embedding gives {x.shape[1]} tokens, budget expects {budget.tokens_in}"
            )
        sizes: Tensor | None = None  # tracked from the first ToMe merge on
        n0, width = x.shape[1], x.shape[2]
        source = torch.eye(n0).expand(x.shape[0], n0, n0) if unmerge_tokens else None
        for parts, plan in zip(blocks, budget.layers, strict=True):
            if x.shape[1] != plan.tokens_in:
                raise ValueError(f"block {plan.index}: {x.shape[1]} tokens, plan {plan.tokens_in}")
            log_s = sizes.log() if sizes is not None and budget.proportional_attention else None
            out, keys, probs = attention(parts, parts.norm1(x), log_s)
            x = x + (parts.ls1(out) if parts.ls1 is not None else out)
            if plan.op == "tome" and plan.r > 0:
                if sizes is None:
                    sizes = x.new_ones(x.shape[0], x.shape[1], 1)
                if source is not None:
                    both, sizes = tome_merge(torch.cat([x, source], -1), sizes,
                                             keys.mean(dim=1), plan.r, protected)
                    x, source = both[..., :width], both[..., width:]
                else:
                    x, sizes = tome_merge(x, sizes, keys.mean(dim=1), plan.r, protected)
            elif plan.op == "evit":
                if sizes is not None:
                    raise ValueError("mixing ToMe and EViT in one budget is not supported")
                x = evit_prune(x, probs, plan.keep, protected, budget.evit_fuse)
            if x.shape[1] != plan.tokens_out:
                raise ValueError(
                    f"block {plan.index}: {x.shape[1]} tokens out, plan {plan.tokens_out}"
                )
            mlp = parts.mlp(parts.norm2(x))
            x = x + (parts.ls2(mlp) if parts.ls2 is not None else mlp)
    return unmerge(x, source) if source is not None else x


def run_reference(
    family: Family, model: nn.Module, pixel_values: Tensor, budget: Budget
) -> dict[str, Tensor]:
    """The eager reference: ``pixel_values[B, C, H, W]`` -> the family's outputs by
    name (``logits[B, num_labels]`` or ``pooler_output[B, C']``), float32."""
    model.eval()
    grid = family.needs_grid(model) and budget.method == "tome"
    tokens = reference_tokens(family, model, pixel_values, budget, unmerge_tokens=grid)
    with torch.no_grad():
        return {name: t.float() for name, t in family.head(model, tokens).items()}
