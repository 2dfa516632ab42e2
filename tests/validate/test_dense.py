from __future__ import annotations

import numpy as np
import pytest

from vtc.validate.dense import dense_fidelity, iou_at, pearson


def _maps(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 12, 10)).astype(np.float32)


def test_identical_and_affine() -> None:
    base = _maps()
    r = dense_fidelity(base, base.copy())
    assert r["n"] == 3 and r["threshold_quantile"] == 0.8
    assert r["pearson_mean"] == pytest.approx(1.0) and r["iou_min"] == 1.0
    assert len(r["pearson"]) == len(r["iou"]) == 3
    # a scaled copy correlates perfectly but its high region differs at the base threshold
    r2 = dense_fidelity(base[:, 0], 3.0 * base[:, 0] + 5.0)
    assert r2["pearson_min"] == pytest.approx(1.0)
    assert r2["iou_mean"] < 0.6


def test_noise_lowers_both() -> None:
    base = _maps(4)
    noisy = base + np.random.default_rng(1).normal(0, 1.0, base.shape)
    r = dense_fidelity(base, noisy, quantile=0.5)
    assert 0.4 < r["pearson_mean"] < 0.9
    assert r["iou_mean"] < 0.8
    assert r["pearson_min"] <= r["pearson_mean"] and r["iou_min"] <= r["iou_mean"]
    unrelated = dense_fidelity(base, _maps(4, seed=7))
    assert abs(unrelated["pearson_mean"]) < 0.3 and unrelated["iou_mean"] < 0.3


def test_iou_uses_base_threshold() -> None:
    base = np.arange(10.0).reshape(1, 2, 5)
    comp = base.copy()
    comp[0, 1, 4] = 0.0  # the top pixel drops out of the compressed map
    r = dense_fidelity(base, comp, quantile=0.8)
    # threshold 7.2: base {8, 9}, comp {8} -> IoU 1/2
    assert r["iou"] == [0.5]
    assert iou_at(np.zeros(4), np.zeros(4), 0.0) == 1.0  # both empty


def test_constant_maps() -> None:
    assert pearson(np.ones(5), np.ones(5)) == 1.0
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0
    r = dense_fidelity(np.ones((1, 4, 4)), np.ones((1, 4, 4)))
    assert r["pearson"] == [1.0] and r["iou"] == [1.0]


def test_multi_channel_maps_score_all_values() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 2, 5, 5))
    r = dense_fidelity(base, base)
    assert r["n"] == 3 and r["pearson_min"] == pytest.approx(1.0) and r["iou_min"] == 1.0
    other = base.copy()
    other[:, 1] = rng.standard_normal((3, 5, 5))  # the second channel is noise
    assert 0.2 < dense_fidelity(base, other)["pearson_mean"] < 0.8


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"differ in shape: base \[2, 1, 4, 4\], compressed"):
        dense_fidelity(np.zeros((2, 1, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\[N, K, H, W\] or \[N, H, W\]"):
        dense_fidelity(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="quantile"):
        dense_fidelity(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), quantile=1.0)
    with pytest.raises(ValueError, match="NaN"):
        dense_fidelity(np.zeros((1, 4, 4)), np.full((1, 4, 4), np.nan))
