from __future__ import annotations

import numpy as np
import pytest

from vtc.validate.probe import linear_probe, pool, row_cosine


def _blobs(n: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, ...]:
    """Gaussian blobs: features [n, dim] around one centre per class, labels [n]."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 5, (classes, dim))
    y = np.arange(n) % classes
    return centres[y] + rng.normal(0, spread, (n, dim)), y


def test_separable_identical_features() -> None:
    xtr, ytr = _blobs(200, 4, 16, 0.5, seed=0)
    xte, yte = _blobs(100, 4, 16, 0.5, seed=1)
    r = linear_probe(xtr, ytr, xte, xte.copy(), yte, seed=0)
    assert r["baseline_acc"] == pytest.approx(100.0)
    assert r["compressed_acc"] == r["baseline_acc"] and r["drop_points"] == 0.0
    assert r["embedding_cosine_mean"] == pytest.approx(1.0)
    assert r["embedding_cosine_min"] == pytest.approx(1.0)
    assert (r["n_train"], r["n_test"], r["n_classes"]) == (200, 100, 4)
    assert "logistic regression" in r["classifier"] and "did not converge" not in r["classifier"]
    assert all(isinstance(r[k], float) for k in ("baseline_acc", "drop_points"))


def test_shuffled_compressed_features_drop() -> None:
    xtr, ytr = _blobs(200, 4, 16, 0.5, seed=0)
    xte, yte = _blobs(200, 4, 16, 0.5, seed=1)
    comp = xte[np.random.default_rng(2).permutation(len(xte))]
    r = linear_probe(xtr, ytr, xte, comp, yte)
    assert r["baseline_acc"] > 99
    assert r["drop_points"] > 50  # chance level is 25 %
    assert r["embedding_cosine_mean"] < 0.9


def test_small_noise_small_drop_and_cosine() -> None:
    xtr, ytr = _blobs(300, 3, 8, 2.0, seed=0)
    xte, yte = _blobs(300, 3, 8, 2.0, seed=1)
    comp = xte + np.random.default_rng(3).normal(0, 0.05, xte.shape)
    r = linear_probe(xtr, ytr, xte, comp, yte)
    assert abs(r["drop_points"]) < 3
    assert 0.99 < r["embedding_cosine_mean"] < 1.0
    assert r["embedding_cosine_min"] <= r["embedding_cosine_mean"]
    assert r["drop_points"] == pytest.approx(r["baseline_acc"] - r["compressed_acc"])


def test_deterministic() -> None:
    xtr, ytr = _blobs(120, 3, 8, 3.0, seed=0)
    xte, yte = _blobs(60, 3, 8, 3.0, seed=1)
    comp = xte * 0.9 + 0.3
    assert linear_probe(xtr, ytr, xte, comp, yte) == linear_probe(xtr, ytr, xte, comp, yte)


def test_bad_inputs() -> None:
    x = np.ones((4, 3))
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="differ"):
        linear_probe(x, y, x, np.ones((4, 2)), y)
    with pytest.raises(ValueError, match="train_x has 3 features"):
        linear_probe(x, y, np.ones((4, 2)), np.ones((4, 2)), y)
    with pytest.raises(ValueError, match="test_y must be"):
        linear_probe(x, y, x, x, y[:3])
    with pytest.raises(ValueError, match="at least 2"):
        linear_probe(x, np.zeros(4, int), x, x, y)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(x, y, x, np.full((4, 3), np.nan), y)
    with pytest.raises(ValueError, match=r"features \[N, C\]"):
        linear_probe(np.ones((4, 3, 2)), y, x, x, y)
    with pytest.raises(ValueError, match="integer class labels"):
        linear_probe(x, y.astype(float), x, x, y)


def test_pool() -> None:
    tokens = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(pool(tokens), tokens[:, 0, :])
    feats = np.ones((2, 3))
    assert pool(feats) is feats
    for bad in (np.ones(3), np.ones((1, 2, 3, 4))):
        with pytest.raises(ValueError, match="cannot pool"):
            pool(bad)


def test_row_cosine_zero_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(row_cosine(a, b), [1.0, 1.0, 0.0, -1.0])
