"""How closely a compressed model follows its baseline (not numerical parity:
token compression changes the function, this measures by how much)."""

from __future__ import annotations

import numpy as np

from vtc.validate.parity import per_sample_cosine


def fidelity(base: np.ndarray, comp: np.ndarray, classifier: bool) -> dict[str, float | int]:
    """Compare baseline and compressed outputs of the same images.

    ``base``/``comp``: ``[N, K]`` logits when ``classifier`` else any ``[N, ...]``
    features. Returns ``cosine_mean``/``cosine_min`` over per-sample cosines and
    ``n``; for classifiers also ``top1_agreement`` (fraction of samples with equal
    argmax) and, when ``K >= 5``, ``top5_agreement`` (fraction of samples whose
    baseline top-1 class is among the compressed model's 5 highest logits).
    """
    if base.shape != comp.shape:
        raise ValueError(f"shape mismatch: baseline {base.shape} vs compressed {comp.shape}")
    if base.ndim == 0 or base.shape[0] == 0:
        raise ValueError(f"need at least one sample along axis 0, got shape {base.shape}")
    cos = per_sample_cosine(base, comp)
    out: dict[str, float | int] = {
        "n": int(base.shape[0]),
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
    }
    if not classifier:
        return out
    if base.ndim != 2:
        raise ValueError(f"classifier outputs must be [N, K] logits, got shape {base.shape}")
    b_top1 = np.argmax(base, axis=1)
    out["top1_agreement"] = float(np.mean(b_top1 == np.argmax(comp, axis=1)))
    k = base.shape[1]
    if k >= 5:
        c_top5 = np.argpartition(-np.asarray(comp), 4, axis=1)[:, :5]
        out["top5_agreement"] = float(np.mean(np.any(c_top5 == b_top1[:, None], axis=1)))
    return out


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of matching rows of a, b `[..., C]`, flattened to `[rows]`."""
    return per_sample_cosine(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))


def token_fidelity(base: np.ndarray, comp: np.ndarray) -> dict[str, float | int | str]:
    """Per-token cosine of two token sequences `[n, N, C]` (the compressed one unmerged
    to all N tokens): mean and min over every token of every sample."""
    if base.shape != comp.shape or base.ndim != 3:
        raise ValueError(f"token outputs must both be [n, N, C]: {base.shape} vs {comp.shape}")
    cos = _cos_rows(base, comp)
    return {"n": int(base.shape[0]), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "basis": "token"}


def pooled_fidelity(base: np.ndarray, comp: np.ndarray, sizes: np.ndarray
                    ) -> dict[str, float | int | str]:
    """Cosine of the size-weighted mean token of a merged sequence `comp` `[n, N', C]`
    (sizes `[n, N']`) against the mean token of `base` `[n, N, C]`, per sample: for
    pruned tokens, which cannot be unmerged."""
    if base.ndim != 3 or comp.ndim != 3 or sizes.shape != comp.shape[:2]:
        raise ValueError(f"expected [n, N, C], [n, N', C] and [n, N']: {base.shape}, "
                         f"{comp.shape}, {sizes.shape}")
    pooled = (comp * sizes[..., None]).sum(1) / sizes.sum(1, keepdims=True)
    cos = _cos_rows(base.mean(1), pooled)
    return {"n": int(base.shape[0]), "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()), "basis": "pooled"}
