"""Engine parity: the rewritten ONNX graph in ONNX Runtime against the eager
reference at the same budget — two independent implementations of one
algorithm — on every family variant, for every method in each of its formulations,
a chain of methods and ToMe's earlier split."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.budgets import budget as chain
from tests.budgets import evit_budget, pitome_budget, tome_budget
from tests.tiny import IMAGE, VARIANTS, LazyModels, pixels
from vtc.budget import Budget
from vtc.exporter.eager import run_reference
from vtc.passes import load
from vtc.stages.compress import rewrite as compress

# Every method on every family variant; the variations of a method (ToMe's earlier split,
# EViT's mean fuse, chains) on one variant of each token layout (P = 1, 2, 0, registers-free).
METHODS = ["tome", "pitome", "evit"]
VARIATIONS = ["tome-outside", "evit-mean", "evit-score-mean", "tome+evit", "pitome+tome"]
LAYOUTS = ["vit-cls", "deit-teacher", "siglip", "dinov2"]
# ... each in both formulations (gather, compact: the same decisions, `vtc.budget.choose`)
CASES = [(v, m, f) for m in METHODS for v in sorted(VARIANTS) for f in ("gather", "compact")
         ] + [(v, m, "auto") for m in VARIATIONS for v in LAYOUTS]


def _budget(method: str, family, model,  # type: ignore[no-untyped-def]
            formulation: str = "auto") -> Budget:
    geo = family.geometry(model, IMAGE)
    f = {"formulation": formulation}
    return {
        "tome": lambda: tome_budget(geo, r=3, **f),
        "tome-outside": lambda: tome_budget(geo, r=3, protected="outside"),
        "pitome": lambda: pitome_budget(geo, r=3, **f),
        "evit": lambda: evit_budget(geo, 0.6, [0, 2], **f),
        "evit-mean": lambda: evit_budget(geo, 0.6, [0, 2], fuse="mean"),
        "evit-score-mean": lambda: evit_budget(geo, 0.6, [0, 2], score="mean"),
        "tome+evit": lambda: chain(geo, ("tome", {"r": 3, "layers": [0, 1]}),
                                   ("evit", {"keep_rate": 0.6, "layers": [2],
                                             "score": "cls" if geo.protected else "mean"})),
        "pitome+tome": lambda: chain(geo, ("pitome", {"r": 2, "layers": [0]}),
                                     ("tome", {"r": 2, "layers": [1, 2]})),
    }[method]()


@pytest.mark.parametrize(("variant", "method", "formulation"), CASES)
def test_engine_matches_eager_reference(tiny: LazyModels, variant: str, method: str,
                                        formulation: str) -> None:
    family, model = tiny.model(variant)
    budget = _budget(method, family, model, formulation)
    assert budget.tokens_out < budget.tokens_in
    if formulation != "auto":  # forced: every site is written that way
        assert {lp.formulation for lp in budget.reducing_layers} == {formulation}
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
