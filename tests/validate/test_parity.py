from __future__ import annotations

import math

import numpy as np
import pytest

from vtc.validate.parity import Stats, compare, compare_outputs, per_sample_cosine, worst_case


def test_compare_hand_made() -> None:
    ref = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    cand = ref.copy()
    cand[0, 3] = 4.5  # one error of 0.5
    s = compare(ref, cand)
    assert s.shape == [2, 4]
    assert s.max_abs_diff == pytest.approx(0.5)
    assert s.mean_abs_diff == pytest.approx(0.5 / 8)
    assert s.max_rel_diff == pytest.approx(0.5 / 4.0)
    assert 0.0 < s.p99_abs_diff <= 0.5
    # sample 1 identical -> cosine 1; sample 0 slightly off
    expected0 = np.dot([1, 2, 3, 4], [1, 2, 3, 4.5]) / (
        np.linalg.norm([1, 2, 3, 4]) * np.linalg.norm([1, 2, 3, 4.5])
    )
    assert s.cosine_min == pytest.approx(expected0)
    assert s.cosine_mean == pytest.approx((expected0 + 1.0) / 2)
    d = s.to_dict()
    assert d["shape"] == [2, 4] and d["max_abs_diff"] == pytest.approx(0.5)


def test_identical_arrays() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5, 7))
    s = compare(x, x)
    assert s.max_abs_diff == 0.0 and s.max_rel_diff == 0.0
    assert s.cosine_min == pytest.approx(1.0)


def test_rel_diff_floor_for_zero_reference() -> None:
    ref = np.array([[100.0, 0.0]])
    cand = np.array([[100.0, 0.01]])
    # floor = 1e-6 + 1e-3 * 100 = 0.100001
    assert compare(ref, cand).max_rel_diff == pytest.approx(0.01 / 0.100001)


def test_cosine_edge_cases() -> None:
    a = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    np.testing.assert_allclose(per_sample_cosine(a, b), [1.0, 0.0, -1.0])
    nan = per_sample_cosine(np.array([[1.0, np.nan]]), np.array([[1.0, 1.0]]))
    assert math.isnan(nan[0])
    # a 1-d array is one sample
    assert per_sample_cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])).shape == (1,)


def test_shape_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        compare(np.zeros((0, 3)), np.zeros((0, 3)))


def test_compare_outputs_names_offending_output() -> None:
    ref = {"logits": np.zeros((2, 3)), "hidden": np.zeros((2, 4, 5))}
    good = {"logits": np.ones((2, 3)), "hidden": np.zeros((2, 4, 5)), "extra": np.zeros(1)}
    stats = compare_outputs(ref, good)
    assert set(stats) == {"logits", "hidden"}
    assert isinstance(stats["logits"], Stats) and stats["logits"].max_abs_diff == 1.0
    with pytest.raises(ValueError, match="'hidden'"):
        compare_outputs(ref, {"logits": np.zeros((2, 3)), "hidden": np.zeros((2, 3, 5))})
    with pytest.raises(KeyError, match="hidden"):
        compare_outputs(ref, {"logits": np.zeros((2, 3))})


def test_worst_case() -> None:
    ref = {"a": np.ones((2, 3)), "b": np.ones((2, 3))}
    cand = {"a": np.ones((2, 3)) * 1.1, "b": np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0]])}
    w = worst_case(compare_outputs(ref, cand))
    assert w["worst_output"] == "b"
    assert w["max_abs_diff"] == pytest.approx(2.0)
    assert w["cosine_min"] == pytest.approx(1.0 / 3.0)
    with pytest.raises(ValueError):
        worst_case({})
