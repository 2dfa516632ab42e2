"""vtc's engines against independent implementations of the published algorithms.

`tests/reference/` re-implements ToMe (facebookresearch/ToMe; on ViT, DeiT and DINOv2,
with its layer scale) and PiToMe (hchautran/PiToMe, `pitome()` at 01b65c37, on ViT/DeiT)
on Hugging Face models without importing vtc. vtc's ONNX rewrite, run in ONNX Runtime,
must match them to 1e-4 — and vtc's earlier ToMe variant (`protected: outside`) must
not, on a one-CLS model, which proves the comparison can tell the two bipartite splits
apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.budgets import pitome_budget, tome_budget
from tests.reference.pitome_reference import pitome_forward
from tests.reference.tome_reference import tome_forward
from tests.tiny import IMAGE, LazyModels, pixels
from vtc.passes import load
from vtc.stages.compress import rewrite


def _engine(tiny: LazyModels, variant: str, budget: Any) -> np.ndarray:
    m = load(tiny.onnx(variant))
    rewrite(m, budget)
    sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: pixels().numpy()})[0]


def _oracle(fn: Any, tiny: LazyModels, variant: str, **kw: Any) -> np.ndarray:
    _, model = tiny.model(variant)
    with torch.no_grad():
        out = fn(model, pixels(), **kw)
    return next(iter(out.values())).numpy()


@pytest.mark.parametrize("variant", ["vit-cls", "vit-enc", "deit-teacher", "dinov2"])
@pytest.mark.parametrize("r", [2, [3, 0, 2], [4, 3, 1]])
def test_tome_matches_the_published_algorithm(tiny: LazyModels, variant: str,
                                              r: int | list[int]) -> None:
    family, model = tiny.model(variant)
    geo = family.geometry(model, IMAGE)
    want = _oracle(tome_forward, tiny, variant, r=r)
    got = _engine(tiny, variant, tome_budget(geo, r=r))
    assert np.abs(got - want).max() <= 1e-4
    # the merges changed the output (so the agreement above says something)
    assert np.abs(_oracle(tome_forward, tiny, variant, r=0) - want).max() > 1e-3


@pytest.mark.parametrize("variant", ["vit-cls", "vit-enc"])
def test_the_earlier_split_is_a_different_algorithm(tiny: LazyModels, variant: str) -> None:
    """With one CLS token, `protected: outside` pairs the opposite tokens."""
    family, model = tiny.model(variant)
    geo = family.geometry(model, IMAGE)
    want = _oracle(tome_forward, tiny, variant, r=[4, 3, 1])
    got = _engine(tiny, variant, tome_budget(geo, r=[4, 3, 1], protected="outside"))
    assert np.abs(got - want).max() > 1e-3


def test_deit_splits_agree() -> None:
    """With CLS and a distillation token (P = 2) both splits are the ToMe code's."""
    from vtc.methods.tome import first_set

    assert first_set(2, "inside") == first_set(2, "outside") == 0
    assert first_set(1, "inside") == 1 and first_set(1, "outside") == 0


@pytest.mark.parametrize(("variant", "r", "margin"), [
    ("vit-cls", 2, 0.9), ("vit-cls", [3, 0, 2], 0.9), ("vit-cls", [4, 3, 1], 0.9),
    ("vit-enc", [4, 3, 1], 0.9), ("vit-cls", [4, 3, 1], 0.3), ("vit-enc", 2, -0.5),
])
def test_pitome_matches_the_published_algorithm(tiny: LazyModels, variant: str,
                                                r: int | list[int], margin: float) -> None:
    family, model = tiny.model(variant)
    geo = family.geometry(model, IMAGE)
    want = _oracle(pitome_forward, tiny, variant, r=r, margin=margin)
    got = _engine(tiny, variant, pitome_budget(geo, r=r, margin=margin))
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(_oracle(pitome_forward, tiny, variant, r=0) - want).max() > 1e-3
