"""Engine parity: the rewritten ONNX graph in ONNX Runtime against the eager
reference at the same budget — two independent implementations of one
algorithm — on every family variant, for ToMe and EViT."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.tiny import IMAGE, VARIANTS, LazyModels, pixels
from vtc.budget import Budget, evit_budget, tome_budget
from vtc.exporter.eager import run_reference
from vtc.passes import compress, load


def _budget(method: str, family, model) -> Budget:  # type: ignore[no-untyped-def]
    geo = family.geometry(model, IMAGE)
    if method == "tome":
        return tome_budget(geo, r=3)
    if method == "evit-mean":
        return evit_budget(geo, 0.6, [0, 2], fuse="mean")
    return evit_budget(geo, 0.6, [0, 2])


@pytest.mark.parametrize("method", ["tome", "evit", "evit-mean"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_engine_matches_eager_reference(tiny: LazyModels, variant: str, method: str) -> None:
    family, model = tiny.model(variant)
    budget = _budget(method, family, model)
    assert budget.tokens_out < budget.tokens_in
    m = load(tiny.onnx(variant))
    res = compress(m, budget)
    assert res.sites == len(budget.reducing_layers) > 0
    sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = pixels()
    name = sess.get_outputs()[0].name
    got = sess.run([name], {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = run_reference(family, model, x, budget)[name].numpy()
        full = family.wrap_for_export(model)(x)[0].numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    # the reduction did change the output (so the comparison is not vacuous)
    assert np.abs(full - want).max() > 1e-4
