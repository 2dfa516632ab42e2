"""Independent reference implementation of Token Merging (ToMe) for Hugging Face ViT / DeiT
and DINOv2.

This module is a test oracle. It re-implements, from the published algorithm and the
authors' reference code (Bolya et al., ICLR 2023, "Token Merging: Your ViT But Faster";
github.com/facebookresearch/ToMe: ``tome/merge.py`` ``bipartite_soft_matching`` and
``merge_wavg``, ``tome/patch/timm.py`` ``ToMeBlock`` / ``ToMeAttention``, ``tome/utils.py``
``parse_r``), the forward pass of a ToMe-patched transformers 5 ViT / DeiT / DINOv2
(``Dinov2Model``) model. It does not import anything from the project package ``vtc``.

What the reference does, and what is recomputed here block by block
(``B`` = batch, ``N`` = current token count, ``C`` = hidden size, ``H`` = heads,
``D = C / H`` = head dim)::

    x: [B, N, C]
    a      = attention(layernorm_before(x), size)   # [B, N, C]; also keys k: [B, H, N, D]
    metric = k.mean(heads)                          # [B, N, D]
    x      = x + a
    x, size = merge_wavg(bipartite_soft_matching(metric, r), x, size)   # N -> N - r
    x      = x + mlp(layernorm_after(x))

DINOv2 blocks carry layer scale (a learned per-channel factor ``ls``, HF's
``layer_scale1`` / ``layer_scale2``) on both branches: ``x = x + ls1 * a`` and
``x = x + ls2 * mlp(...)``, the merge still between the two. The published patch's
``ToMeBlock.forward`` was copied from a timm ``Block`` that had no layer scale, so it has
no ``ls1`` / ``ls2`` calls and would drop them on a layer-scale model; this oracle applies
them where the unpatched block does, so that r = 0 is the model. ``Dinov2Model`` has no
register tokens (``Dinov2WithRegistersModel`` is another class, not covered), and its
output is the final layernorm's token 0 (``pooler_output``). ``Dinov2ForImageClassification``
(which also averages the patch tokens) is refused: the patch defines no size-aware mean.

Proportional attention adds ``log(size)`` ([B, 1, 1, N]) to the scaled attention logits
along the key axis, in every block once token sizes exist (i.e. from the block after the
first merge on), exactly as ``ToMeAttention`` does.

Determinism (a deliberate, documented deviation from the reference's *implementation*, not
its algorithm): the reference ranks the A-side edges with ``argsort(descending=True)``,
which is not a stable sort, so equal scores may be ordered arbitrarily. This oracle uses a
stable descending sort instead: among edges with equal score the one whose A token has the
lower index ranks first (merges first). The best B partner of each A token is taken with
``max(dim=-1)``, which returns the first (lowest-index) maximum on ties. With distinct
scores the result is identical to the reference.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BlockTrace",
    "Matching",
    "bipartite_soft_matching",
    "merge_wavg",
    "parse_r",
    "tome_forward",
]


# --------------------------------------------------------------------------------------
# r schedule (tome/utils.py parse_r)
# --------------------------------------------------------------------------------------


def parse_r(num_layers: int, r: int | Sequence[int] | tuple[int, float]) -> list[int]:
    """Turn ``r`` into one requested reduction per block, as the reference's ``parse_r``.

    Args:
        num_layers: number of transformer blocks L.
        r: an ``int`` (the same r in every block), a ``list`` of per-block values (padded
            with zeros when shorter than L), or a ``(r, inflection)`` tuple (linear
            schedule from ``int(r * (1 - inflection))`` to ``2 r - that``, as the reference).

    Returns:
        A list of L requested reductions. Each is still clipped per block by
        :func:`bipartite_soft_matching` to ``(tokens - protected) // 2``.

    Raises:
        ValueError: if a list is longer than L (the reference would silently ignore the
            excess; an oracle should not).
    """
    if isinstance(r, tuple):
        r0, inflect = operator.index(r[0]), float(r[1])
        lo = int(r0 * (1.0 - inflect))
        hi = 2 * r0 - lo
        if num_layers == 1:
            return [lo]
        step = (hi - lo) / (num_layers - 1)
        return [int(lo + step * i) for i in range(num_layers)]
    if not isinstance(r, Sequence):
        # The reference computes this through the tuple formula with inflection 0, which
        # yields the constant list (and divides by zero when L == 1).
        return [operator.index(r)] * num_layers
    values = [operator.index(v) for v in cast(Sequence[int], r)]
    if len(values) > num_layers:
        raise ValueError(f"r schedule has {len(values)} entries for {num_layers} blocks")
    return values + [0] * (num_layers - len(values))


# --------------------------------------------------------------------------------------
# Bipartite soft matching and size-weighted merge (tome/merge.py)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matching:
    """The outcome of one bipartite soft matching step.

    Set A = tokens at even positions of the whole sequence (0, 2, 4, ...; the CLS token is
    A[0]); set B = tokens at odd positions (1, 3, ...; a DeiT distillation token is B[0]).

    Attributes:
        r: number of tokens removed (after clipping); 0 means "do nothing".
        unm_idx: [B, Na - r, 1] int64, indices into A of the A tokens that stay, ascending
            when ``class_token`` (so CLS stays first), else in edge-rank order.
        src_idx: [B, r, 1] int64, indices into A of the A tokens merged away, in edge-rank
            order (best edge first).
        dst_idx: [B, r, 1] int64, for each ``src_idx`` entry the index into B it merges into.
        distill_token: whether the output puts B[0] back at position 1.
    """

    r: int
    unm_idx: torch.Tensor | None
    src_idx: torch.Tensor | None
    dst_idx: torch.Tensor | None
    distill_token: bool

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Sum-merge ``x`` [B, N, c] → [B, N - r, c] (the reference's ``merge(x, mode="sum")``).

        Output order: [kept A tokens..., B tokens...], or with a distillation token
        [A kept[0] (CLS), B[0] (distill), kept A[1:]..., B[1:]...]. Each B row holds its own
        value plus the sum of the A rows merged into it (``scatter_reduce`` ``"sum"`` with
        ``include_self``).
        """
        if self.r == 0:
            return x
        assert self.unm_idx is not None and self.src_idx is not None
        assert self.dst_idx is not None
        a, b = x[:, ::2, :], x[:, 1::2, :]
        n, na, c = a.shape
        kept = a.gather(1, self.unm_idx.expand(n, na - self.r, c))
        moved = a.gather(1, self.src_idx.expand(n, self.r, c))
        b = b.scatter_reduce(1, self.dst_idx.expand(n, self.r, c), moved, reduce="sum")
        if self.distill_token:
            return torch.cat([kept[:, :1], b[:, :1], kept[:, 1:], b[:, 1:]], dim=1)
        return torch.cat([kept, b], dim=1)


def bipartite_soft_matching(
    metric: torch.Tensor,
    r: int,
    class_token: bool = False,
    distill_token: bool = False,
) -> Matching:
    """Balanced bipartite soft matching, as the reference's ``bipartite_soft_matching``.

    Args:
        metric: [B, N, D] similarity features (keys averaged over heads).
        r: requested number of tokens to remove; clipped to ``(N - protected) // 2`` where
            ``protected`` counts the CLS and distillation tokens.
        class_token: protect sequence position 0 (row 0 of the score matrix is -inf).
        distill_token: protect sequence position 1 (column 0 of the score matrix is -inf).

    Returns:
        A :class:`Matching`. Edges are ranked with a *stable* descending sort on each A
        token's best score (ties: lower A index first); each A token's partner is its
        first-maximum B token.
    """
    protected = int(class_token) + int(distill_token)
    t = metric.shape[1]
    r = min(r, (t - protected) // 2)
    if r <= 0:
        return Matching(0, None, None, None, distill_token)

    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True)
        a, b = m[:, ::2, :], m[:, 1::2, :]
        scores = a @ b.transpose(-1, -2)  # [B, Na, Nb], cosine similarity
        if class_token:
            scores[:, 0, :] = -math.inf
        if distill_token:
            scores[:, :, 0] = -math.inf
        node_max, node_idx = scores.max(dim=-1)  # [B, Na]; first maximum on ties
        order = torch.sort(node_max, dim=-1, descending=True, stable=True).indices
        edge_idx = order[..., None]  # [B, Na, 1]
        unm_idx = edge_idx[:, r:, :]
        src_idx = edge_idx[:, :r, :]
        dst_idx = node_idx[..., None].gather(1, src_idx)
        if class_token:
            unm_idx = unm_idx.sort(dim=1).values
    return Matching(r, unm_idx, src_idx, dst_idx, distill_token)


def merge_wavg(
    matching: Matching, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average merge, as the reference's ``merge_wavg``.

    Args:
        matching: the matching for this block.
        x: [B, N, C] residual stream.
        size: [B, N, 1] token sizes (how many input patches each token stands for), or None
            for all ones.

    Returns:
        ``(x, size)`` with shapes [B, N - r, C] and [B, N - r, 1]: ``merge(x * size) /
        merge(size)`` with sum-merges.
    """
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = matching.merge(x * size)
    size = matching.merge(size)
    return x / size, size


# --------------------------------------------------------------------------------------
# Forward pass of a ToMe-patched HF ViT / DeiT
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockTrace:
    """What one block did.

    Attributes:
        tokens_in: token count N entering the block.
        r_requested: r from the schedule for this block.
        r: tokens actually removed (after clipping; 0 when the block did not merge).
        tokens_out: token count leaving the block (``tokens_in - r``).
        size: [B, tokens_out, 1] token sizes after the block, or None while no merge
            has happened yet (the reference's ``_tome_info["size"]``).
        hidden: [B, tokens_out, C] the residual stream leaving the block.
    """

    tokens_in: int
    r_requested: int
    r: int
    tokens_out: int
    size: torch.Tensor | None
    hidden: torch.Tensor


def _backbone(model: Any) -> Any:
    """The ViTModel / DeiTModel / Dinov2Model inside ``model`` (or ``model`` itself)."""
    if type(model).__name__ == "Dinov2ForImageClassification":
        raise TypeError("Dinov2ForImageClassification pools the mean of the patch tokens; "
                        "the ToMe patch defines no size-aware mean: use Dinov2Model")
    if hasattr(model, "embeddings") and (hasattr(model, "layers") or hasattr(model, "encoder")):
        return model
    for name in ("vit", "deit"):
        inner = getattr(model, name, None)
        if inner is not None:
            return inner
    raise TypeError(f"unsupported model type {type(model).__name__}")


@dataclass(frozen=True)
class _Block:
    """One transformer block's parts, whatever the family calls them.

    ``norm1`` / ``norm2``: the layernorms before attention and before the MLP; ``ls1`` /
    ``ls2``: the layer-scale factors [C] of the two branches (None: no layer scale)."""

    layer: Any
    norm1: Any
    norm2: Any
    ls1: torch.Tensor | None
    ls2: torch.Tensor | None


def _blocks(backbone: Any) -> list[_Block]:
    """ViT / DeiT (``layers``, ``layernorm_before`` / ``_after``) or DINOv2
    (``encoder.layer``, ``norm1`` / ``norm2``, ``layer_scale1`` / ``2``)."""
    if hasattr(backbone, "layers"):
        return [_Block(layer, layer.layernorm_before, layer.layernorm_after, None, None)
                for layer in backbone.layers]
    if getattr(backbone.embeddings, "register_tokens", None) is not None:
        raise TypeError("register tokens are not covered by this oracle")
    return [_Block(layer, layer.norm1, layer.norm2, layer.layer_scale1.lambda1,
                   layer.layer_scale2.lambda1) for layer in backbone.encoder.layer]


def _attention(
    layer: Any, h: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention of one HF ViT/DeiT/DINOv2 layer, with proportional attention.

    Args:
        layer: a ``ViTLayer`` / ``DeiTLayer`` / ``Dinov2Layer``.
        h: [B, N, C] layernorm_before output.
        size: [B, N, 1] token sizes, or None (no proportional attention term).

    Returns:
        ``(out, metric)``: out [B, N, C] after the output projection, metric [B, N, D] the
        keys averaged over heads.
    """
    att = layer.attention
    n_b, n_t, _ = h.shape
    heads = att.num_attention_heads
    head_dim = att.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # [B, N, H*D] -> [B, H, N, D]
        return t.view(n_b, n_t, heads, head_dim).transpose(1, 2)

    q = split(F.linear(h, att.q_proj.weight, att.q_proj.bias))
    k = split(F.linear(h, att.k_proj.weight, att.k_proj.bias))
    v = split(F.linear(h, att.v_proj.weight, att.v_proj.bias))
    logits = (q @ k.transpose(-2, -1)) * (head_dim**-0.5)  # [B, H, N, N]
    if size is not None:
        logits = logits + size.log()[:, None, None, :, 0]  # [B, 1, 1, N] over keys
    probs = logits.softmax(dim=-1)
    ctx = (probs @ v).transpose(1, 2).reshape(n_b, n_t, heads * head_dim)
    out = F.linear(ctx, att.o_proj.weight, att.o_proj.bias)
    return out, k.mean(dim=1)


def _mlp(layer: Any, h: torch.Tensor) -> torch.Tensor:
    """fc1 → activation → fc2 of one HF ViT/DeiT/DINOv2 layer (DINOv2's SwiGLU variant:
    down(silu(gate(h)) * up(h))); h [B, N, C] → [B, N, C]."""
    mlp = layer.mlp
    if hasattr(mlp, "gate_proj"):
        gate = F.silu(F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias))
        up = F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias)
        return F.linear(gate * up, mlp.down_proj.weight, mlp.down_proj.bias)
    h = F.linear(h, mlp.fc1.weight, mlp.fc1.bias)
    h = mlp.activation_fn(h)
    return F.linear(h, mlp.fc2.weight, mlp.fc2.bias)


def _layer_norm(ln: Any, x: torch.Tensor) -> torch.Tensor:
    """Apply an ``nn.LayerNorm`` from its weights; x [..., C] → [..., C]."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _head(model: Any, backbone: Any, seq: torch.Tensor) -> dict[str, torch.Tensor]:
    """The HF output computed from the final-layernormed sequence ``seq`` [B, N', C]."""
    if hasattr(model, "cls_classifier") and hasattr(model, "distillation_classifier"):
        cls_logits = model.cls_classifier(seq[:, 0, :])
        dist_logits = model.distillation_classifier(seq[:, 1, :])
        return {"logits": (cls_logits + dist_logits) / 2}
    if hasattr(model, "classifier"):
        return {"logits": model.classifier(seq[:, 0, :])}
    pooler = getattr(backbone, "pooler", None)
    if pooler is not None:
        return {"pooler_output": pooler.activation(pooler.dense(seq[:, 0]))}
    # HF returns pooler_output=None here; the CLS token is the model's pooled feature.
    return {"pooler_output": seq[:, 0]}


@torch.no_grad()
def tome_forward(
    model: nn.Module,
    pixel_values: torch.Tensor,
    r: int | list[int],
    prop_attn: bool = True,
    trace: list[BlockTrace] | None = None,
) -> dict[str, torch.Tensor]:
    """Forward pass of an HF ViT/DeiT/DINOv2 model with ToMe applied as the reference code
    does (DINOv2: with its layer scale, module docstring).

    Args:
        model: a transformers 5 ``ViTForImageClassification``, ``ViTModel``,
            ``DeiTForImageClassificationWithTeacher``, ``DeiTForImageClassification``,
            ``DeiTModel`` or ``Dinov2Model`` in eval mode (float32).
        pixel_values: [B, 3, H, W] at the model's configured image size.
        r: tokens to remove per block: an int (same r in every block) or a per-block list
            (padded with zeros), each clipped per block to ``(N - protected) // 2``.
        prop_attn: add ``log(size)`` to the attention logits once sizes exist.
        trace: if given, one :class:`BlockTrace` per block is appended to it.

    Returns:
        ``{"logits": [B, num_labels]}`` for the classifiers, ``{"pooler_output": [B, C']}``
        for ``ViTModel`` / ``DeiTModel`` / ``Dinov2Model`` (the pooler on token 0, or token 0
        itself when the model has no pooler).
    """
    if model.training:
        raise ValueError("tome_forward reproduces inference only; call model.eval() first")
    backbone = _backbone(model)
    embeddings: Any = backbone.embeddings
    class_token = getattr(embeddings, "cls_token", None) is not None
    distill_token = getattr(embeddings, "distillation_token", None) is not None
    blocks = _blocks(backbone)
    schedule = parse_r(len(blocks), r)

    pixel_values = pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype)
    x = embeddings(pixel_values)  # [B, N0, C]
    size: torch.Tensor | None = None

    for blk, r_block in zip(blocks, schedule, strict=True):
        tokens_in = x.shape[1]
        attn_out, metric = _attention(
            blk.layer, _layer_norm(blk.norm1, x), size if prop_attn else None
        )
        x = x + (attn_out if blk.ls1 is None else attn_out * blk.ls1)
        removed = 0
        if r_block > 0:
            matching = bipartite_soft_matching(metric, r_block, class_token, distill_token)
            x, size = merge_wavg(matching, x, size)
            removed = matching.r
        mlp_out = _mlp(blk.layer, _layer_norm(blk.norm2, x))
        x = x + (mlp_out if blk.ls2 is None else mlp_out * blk.ls2)
        if trace is not None:
            trace.append(BlockTrace(tokens_in, r_block, removed, x.shape[1], size, x))

    seq = _layer_norm(backbone.layernorm, x)
    return _head(model, backbone, seq)
