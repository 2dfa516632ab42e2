"""The eager PyTorch reference of docs/algorithms.md.

An implementation independent of the ONNX passes: it recomputes every block
by hand from the HF weights (:class:`~vtc.exporter.registry.BlockParts`) and
applies the budget's reductions after the attention residual add, before the
MLP, each with its method's eager op (`vtc.methods`). Engine parity checks
compare the rewritten ONNX graph against it.

Shapes: ``x`` is the residual stream ``[B, N, C]``; ``sizes`` is ``[B, N, 1]``;
keys are ``[B, H, N, D]``; attention probabilities are ``[B, H, N, N]``. The
first ``protected`` tokens are never merged or pruned and stay in front.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vtc import methods
from vtc.budget import NONE, Budget

from .registry import BlockParts, Family


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
    last block (before the final norm / head); with ``unmerge_tokens``, merges are
    undone at the end: ``[B, budget.tokens_in, C]``. The source map rides along as
    extra channels through the same size-weighted merges (an average of one-hot
    rows is non-zero exactly on their union).
    """
    blocks = family.blocks(model)
    if len(blocks) != len(budget.layers):
        raise ValueError(f"budget has {len(budget.layers)} layers, model has {len(blocks)}")
    ops = {lp.method: methods.get(lp.method) for lp in budget.reducing_layers}
    if unmerge_tokens and not all(m.merges for m in ops.values()):
        raise ValueError("pruned tokens cannot be unmerged")
    with torch.no_grad():
        x = family.embed(model, pixel_values.float())
        if x.shape[1] != budget.tokens_in:
            raise ValueError(
                f"embedding gives {x.shape[1]} tokens, budget expects {budget.tokens_in}"
            )
        sizes: Tensor | None = None  # tracked from the first merge on
        n0, width = x.shape[1], x.shape[2]
        source = torch.eye(n0).expand(x.shape[0], n0, n0) if unmerge_tokens else None
        for parts, plan in zip(blocks, budget.layers, strict=True):
            if x.shape[1] != plan.tokens_in:
                raise ValueError(f"block {plan.index}: {x.shape[1]} tokens, plan {plan.tokens_in}")
            log_s = sizes.log() if sizes is not None and plan.attn_bias else None
            out, keys, probs = attention(parts, parts.norm1(x), log_s)
            x = x + (parts.ls1(out) if parts.ls1 is not None else out)
            if plan.method != NONE:
                both = torch.cat([x, source], -1) if source is not None else x
                both, sizes = ops[plan.method].eager(both, sizes, keys, probs, plan,
                                                     budget.protected)
                x, source = (both[..., :width], both[..., width:]) if source is not None else (
                    both, None)
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
    grid = family.needs_grid(model) and bool(budget.reducing_layers) and all(
        methods.get(lp.method).merges for lp in budget.reducing_layers)
    tokens = reference_tokens(family, model, pixel_values, budget, unmerge_tokens=grid)
    with torch.no_grad():
        return {name: t.float() for name, t in family.head(model, tokens).items()}
