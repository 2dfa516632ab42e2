"""Accuracy of a compressed model without a trained head: a linear probe.

A logistic regression is fitted on the uncompressed model's train-image features
and then scores both models' test-image features. The drop in accuracy (points)
says how much class information the compression lost.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

MAX_ITER = 1000
C_REG = 1.0


def pool(out: np.ndarray) -> np.ndarray:
    """Model output -> features ``[N, C]``: a token output ``[N, T, C]`` gives the CLS
    token (index 0); ``[N, C]`` is returned unchanged; other ranks raise ValueError."""
    arr = np.asarray(out)
    if arr.ndim == 3:
        if arr.shape[1] == 0:
            raise ValueError(f"token output {list(arr.shape)} has no tokens to pool")
        return arr[:, 0, :]
    if arr.ndim == 2:
        return arr
    raise ValueError(
        f"cannot pool an output of shape {list(arr.shape)}: expected tokens [N, T, C] "
        "(the CLS token is taken) or features [N, C]"
    )


def _features(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty features [N, C], got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).any(axis=1).sum())
    if bad:
        raise ValueError(f"{name} has {bad} row(s) with NaN or inf")
    return arr


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be [{n}] labels, got shape {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer class labels, got {arr.dtype}")
    return arr.astype(np.int64)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a [N, C]`` with the same row of ``b [N, C]``:
    float64 ``[N]``. Two zero rows give 1, one zero row gives 0."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_base: np.ndarray,
    test_comp: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on the uncompressed model's features, score both models' test features.

    ``train_x [Ntr, C]`` / ``train_y [Ntr]``: uncompressed-model features and labels
    of the train images. ``test_base`` and ``test_comp [Nte, C]``: uncompressed and
    compressed features of the same test images, ``test_y [Nte]`` their labels.
    Features are standardised with mean/std fitted on ``train_x``; the classifier is
    sklearn's LogisticRegression (lbfgs, C=1, ``random_state=seed``).

    Returns n_train, n_test, n_classes, baseline_acc and compressed_acc (percent),
    drop_points (baseline − compressed), embedding_cosine_mean / _min (row-wise
    cosine of test_base vs test_comp, unstandardised) and classifier (a description).
    Raises ValueError on bad shapes, non-finite features or fewer than 2 classes."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr = _features(train_x, "train_x")
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    xb = _features(test_base, "test_base")
    xc = _features(test_comp, "test_comp")
    if xb.shape != xc.shape:
        raise ValueError(f"test_base {list(xb.shape)} and test_comp {list(xc.shape)} differ")
    if xb.shape[1] != xtr.shape[1]:
        raise ValueError(f"train_x has {xtr.shape[1]} features, test_base {xb.shape[1]}")
    yte = _labels(test_y, xb.shape[0], "test_y")
    n_classes = int(np.unique(ytr).size)
    if n_classes < 2:
        raise ValueError(f"train_y has {n_classes} class; a probe needs at least 2")

    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(solver="lbfgs", C=C_REG, max_iter=MAX_ITER, random_state=seed)
    # One BLAS thread: an idle BLAS/OpenMP pool left spinning would steal the cores
    # from ONNX Runtime when the engines are timed later in the same process.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(xtr), ytr)
        base_acc = 100.0 * float(np.mean(clf.predict(scaler.transform(xb)) == yte))
        comp_acc = 100.0 * float(np.mean(clf.predict(scaler.transform(xc)) == yte))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    cos = row_cosine(xb, xc)
    desc = (f"logistic regression (sklearn lbfgs, C={C_REG:g}, max_iter={MAX_ITER}, "
            f"seed {seed}) on train-standardised features, fitted on the uncompressed model"
            + ("" if converged else "; did not converge"))
    return {
        "n_train": int(xtr.shape[0]),
        "n_test": int(xb.shape[0]),
        "n_classes": n_classes,
        "baseline_acc": base_acc,
        "compressed_acc": comp_acc,
        "drop_points": base_acc - comp_acc,
        "embedding_cosine_mean": float(cos.mean()),
        "embedding_cosine_min": float(cos.min()),
        "classifier": desc,
    }
