"""Numerical parity between a reference output and a candidate output.

Arrays are compared element-wise in float64. Axis 0 is the sample axis: an
output ``[N, K]`` (logits) or ``[N, T, C]`` (hidden states) is flattened to
``[N, K]`` / ``[N, T·C]`` for the per-sample cosine similarity.
"""

from __future__ import annotations

import numpy as np

from vtc.report import Stats


def per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample: ``a``, ``b`` ``[N, ...]`` -> ``[N]`` float64.

    A 0-d or 1-d array counts as one sample. Two all-zero samples have cosine 1;
    a zero sample against a non-zero one has cosine 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    n = x.shape[0] if x.ndim >= 2 else 1
    x = x.reshape(n, -1)
    y = y.reshape(n, -1)
    nx = np.linalg.norm(x, axis=1)
    ny = np.linalg.norm(y, axis=1)
    dot = np.einsum("ij,ij->i", x, y)
    denom = nx * ny
    with np.errstate(invalid="ignore"):
        # NaN inputs give NaN cosines (denom == 0 is False for NaN), never a silent 0.
        cos = np.where(denom == 0, 0.0, dot / np.where(denom == 0, 1.0, denom))
    both_zero = (nx == 0) & (ny == 0)
    cos = np.where(both_zero, 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Stats:
    """Statistics of ``candidate - reference``; both must have the same shape [N, ...]."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if ref.size == 0:
        raise ValueError(f"cannot compare empty arrays of shape {ref.shape}")
    diff = np.abs(cand - ref)
    scale = float(np.max(np.abs(ref)))
    floor = 1e-6 + 1e-3 * scale
    rel = diff / np.maximum(np.abs(ref), floor)
    cos = per_sample_cosine(ref, cand)
    return Stats(
        max_abs_diff=float(np.max(diff)),
        mean_abs_diff=float(np.mean(diff)),
        p99_abs_diff=float(np.percentile(diff, 99)),
        max_rel_diff=float(np.max(rel)),
        cosine_min=float(np.min(cos)),
        cosine_mean=float(np.mean(cos)),
        shape=[int(s) for s in ref.shape],
    )


def compare_outputs(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> dict[str, Stats]:
    """Compare every output of ``ref`` with the same-named output of ``cand``.

    Raises ``KeyError`` naming outputs missing from ``cand`` and ``ValueError``
    naming the output whose shapes differ. Extra candidate outputs are ignored.
    """
    missing = [k for k in ref if k not in cand]
    if missing:
        raise KeyError(f"candidate lacks outputs {missing}; it has {sorted(cand)}")
    out: dict[str, Stats] = {}
    for name, r in ref.items():
        c = cand[name]
        if np.shape(r) != np.shape(c):
            raise ValueError(
                f"output {name!r}: reference shape {np.shape(r)} != candidate shape {np.shape(c)}"
            )
        out[name] = compare(r, c)
    return out


def worst_case(stats: dict[str, Stats]) -> dict[str, object]:
    """Worst value of each statistic over all outputs (largest diffs, smallest cosines),
    plus ``worst_output``: the output with the largest ``max_abs_diff``."""
    if not stats:
        raise ValueError("no outputs to summarise")
    items = list(stats.values())
    worst_name = max(stats, key=lambda k: stats[k].max_abs_diff)
    return {
        "max_abs_diff": max(s.max_abs_diff for s in items),
        "mean_abs_diff": max(s.mean_abs_diff for s in items),
        "p99_abs_diff": max(s.p99_abs_diff for s in items),
        "max_rel_diff": max(s.max_rel_diff for s in items),
        "cosine_min": min(s.cosine_min for s in items),
        "cosine_mean": min(s.cosine_mean for s in items),
        "worst_output": worst_name,
    }
