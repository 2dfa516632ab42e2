"""make_batch_dynamic: one compressed engine, any batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.budgets import evit_budget, tome_budget
from tests.tiny import IMAGE, LazyModels
from vtc.exporter.eager import run_reference
from vtc.exporter.export import export_onnx
from vtc.passes import load
from vtc.passes.dynamic_batch import PROBES, make_batch_dynamic
from vtc.stages.compress import rewrite as compress

CASES = [(v, m, True) for v in ("vit-cls", "deit-teacher", "dinov2", "clip", "siglip")
         for m in ("tome", "evit")] + [(v, "tome", False) for v in ("vit-cls", "siglip")]


@pytest.fixture(scope="module")
def dynamic_exports(tiny: LazyModels, tmp_path_factory: pytest.TempPathFactory
                    ) -> Callable[[str, bool], Path]:
    """(variant, dynamo) → its export with a symbolic batch, made once per module."""
    folder, made = tmp_path_factory.mktemp("dyn"), {}

    def get(variant: str, dynamo: bool) -> Path:
        if (variant, dynamo) not in made:
            family, model = tiny.model(variant)
            made[variant, dynamo] = export_onnx(
                family, model, 2, IMAGE, folder / f"{variant}-{dynamo}.onnx", dynamo=dynamo,
                dynamic_batch=True)
        return made[variant, dynamo]

    return get


@pytest.mark.parametrize(("variant", "method", "dynamo"), CASES,
                         ids=[f"{v}-{m}-{'dynamo' if d else 'torchscript'}" for v, m, d in CASES])
def test_any_batch_matches_the_eager_reference(tiny: LazyModels,
                                               dynamic_exports: Callable[[str, bool], Path],
                                               variant: str, method: str, dynamo: bool) -> None:
    family, model = tiny.model(variant)
    geo = family.geometry(model, IMAGE)
    budget = tome_budget(geo, r=3) if method == "tome" else evit_budget(geo, 0.6, [0, 2])
    src = dynamic_exports(variant, dynamo)
    m, twin = load(src, PROBES[0]), load(src, PROBES[1])
    compress(m, budget)
    compress(twin, budget)
    assert make_batch_dynamic(m, twin) > 0
    proto = ir.to_proto(m)
    onnx.checker.check_model(proto)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_outputs()[0].name
    for batch in (1, 4, 5):
        x = torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(batch))
        got = sess.run([name], {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = run_reference(family, model, x, budget)[name].numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, batch


def _gemms(proto: onnx.ModelProto, tmp: Path) -> int:
    """Gemm nodes in the graph onnxruntime makes of `proto` (basic + extended fusions)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sum(n.op_type == "Gemm" for n in onnx.load(str(tmp)).graph.node)


def test_a_dynamic_batch_keeps_the_gemm_fusions(tiny: LazyModels, tmp_path: Path,
                                                dynamic_exports: Callable[[str, bool], Path]
                                                ) -> None:
    """onnxruntime fuses MatMul + bias Add into Gemm on 2-D operands or static 3-D ones;
    the relaxed graph flattens its linear layers to 2-D, so it keeps as many Gemms as
    the graph pinned at one batch, and the names of its batch axis are the caller's."""
    family, model = tiny.model("vit-cls")
    budget = tome_budget(family.geometry(model, IMAGE), r=3)
    src = dynamic_exports("vit-cls", True)
    m, twin, pinned = load(src, PROBES[0]), load(src, PROBES[1]), load(src, PROBES[0])
    for g in (m, twin, pinned):
        compress(g, budget)
    make_batch_dynamic(m, twin, name="batch_size")
    proto = ir.to_proto(m)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    static = _gemms(ir.to_proto(pinned), tmp_path / "static.onnx")
    assert static >= 4 * len(family.blocks(model))  # qkv, out, two MLP layers per block
    assert _gemms(proto, tmp_path / "dynamic.onnx") == static
