from __future__ import annotations

import numpy as np
import pytest

from vtc.validate.fidelity import fidelity


def test_classifier_top1_and_top5() -> None:
    base = np.array(
        [
            [9, 1, 0, 0, 0, 0],  # top1 0
            [0, 9, 1, 0, 0, 0],  # top1 1
            [0, 0, 9, 1, 0, 0],  # top1 2
            [0, 0, 0, 9, 0, 1],  # top1 3
        ],
        dtype=np.float32,
    )
    comp = base.copy()
    comp[1] = [9, 1, 0, 0, 0, 0]  # top1 changes to 0; class 1 still in top5
    comp[2] = [5, 4, -9, 3, 2, 1]  # class 2 is last: outside top5
    f = fidelity(base, comp, classifier=True)
    assert f["n"] == 4
    assert f["top1_agreement"] == pytest.approx(0.5)
    assert f["top5_agreement"] == pytest.approx(0.75)
    assert f["cosine_min"] < f["cosine_mean"] < 1.0


def test_identical_and_few_classes() -> None:
    logits = np.random.default_rng(0).standard_normal((5, 3))
    f = fidelity(logits, logits, classifier=True)
    assert f["top1_agreement"] == 1.0
    assert f["cosine_mean"] == pytest.approx(1.0)
    assert "top5_agreement" not in f


def test_encoder_has_no_top1() -> None:
    feats = np.random.default_rng(1).standard_normal((2, 4, 3))
    f = fidelity(feats, -feats, classifier=False)
    assert "top1_agreement" not in f
    assert f["cosine_mean"] == pytest.approx(-1.0)


def test_errors() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        fidelity(np.zeros((2, 3)), np.zeros((2, 4)), classifier=True)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        fidelity(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), classifier=True)
