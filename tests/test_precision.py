"""fp16 deployment with fp32 decisions (`vtc.passes.precision`, `backend.precision`):
the converted graph, and the bundle whose parity runs on an fp32 reference engine while
the deployed fp16 engine is judged as fidelity against it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main
from vtc.passes.precision import KEEP_PREFIX, convert, to_fp16
from vtc.recipe import load_recipe

F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory: pytest.TempPathFactory, vit_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "b"
    res = CliRunner().invoke(export_main, [
        str(vit_dir), "--recipe", "tome-r8", "--out", str(out), *FAST, "--set", "tome.r=3",
        "--set", "backend.precision=fp16", "--set", "gates.min_deploy_cosine=0.99",
        "--set", "gates.min_deploy_top1=0.5"])
    assert res.exit_code == 0, res.output
    return out


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vals = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: v.type.tensor_type.elem_type for v in vals}


def test_decisions_stay_fp32_and_casts_sit_only_on_crossings(fp16_bundle: Path,
                                                            tmp_path: Path) -> None:
    src = fp16_bundle / "model.onnx"  # the portable fp32 graph
    counts = to_fp16(src, tmp_path / "m16.onnx")
    m = onnx.load(str(tmp_path / "m16.onnx"))
    types = _types(m)
    nodes = list(m.graph.node)
    vtc_nodes = [n for n in nodes if n.name.startswith(KEEP_PREFIX)]
    assert vtc_nodes and counts["fp32"] >= len(vtc_nodes)
    # every float a decision node produces is fp32; every MatMul outside them is fp16
    for n in vtc_nodes:
        for o in n.output:
            assert types.get(o) != F16, f"{n.name} makes fp16 {o}"
    matmuls = [n for n in nodes if n.op_type == "MatMul" and not n.name.startswith(KEEP_PREFIX)]
    assert matmuls and all(types[n.output[0]] == F16 for n in matmuls)
    # I/O stays float32; no Cast feeds another Cast (no fp32→fp16→fp32 round trips)
    assert {v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]} == {F32}
    producer = {o: n for n in nodes for o in n.output}
    for n in nodes:
        if n.op_type == "Cast":
            assert producer.get(n.input[0]) is None or producer[n.input[0]].op_type != "Cast"
    assert counts["casts"] == sum(n.op_type == "Cast" for n in nodes) - sum(
        n.op_type == "Cast" for n in onnx.load(str(src)).graph.node)
    # the weights fp16 MatMuls read are stored once, in fp16 (no fp32 copy kept)
    inits = {i.name: i.data_type for i in m.graph.initializer}
    weights = [x for n in matmuls for x in n.input if x in inits]
    assert weights and all(inits[w] == F16 for w in weights)
    assert (tmp_path / "m16.onnx").stat().st_size < src.stat().st_size


def test_the_fp16_graph_runs_close_to_fp32(fp16_bundle: Path, tmp_path: Path) -> None:
    to_fp16(fp16_bundle / "model.onnx", tmp_path / "m16.onnx")
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y16 = ort.InferenceSession(str(tmp_path / "m16.onnx")).run(None, {"pixel_values": x})[0]
    y32 = ort.InferenceSession(str(fp16_bundle / "model.onnx")).run(None, {"pixel_values": x})[0]
    assert y16.dtype == np.float32
    cos = (y16 * y32).sum(1) / np.linalg.norm(y16, axis=1) / np.linalg.norm(y32, axis=1)
    assert cos.min() > 0.99


def test_parity_on_the_fp32_reference_fidelity_on_the_fp16_deployment(fp16_bundle: Path) -> None:
    r = json.loads((fp16_bundle / "report.json").read_text())
    e = r["engine"]
    assert e["precision"] == "fp16" and e["reference"] == {"precision": "fp32",
                                                           "provider_options": {}}
    assert e["conversion"]["casts"] > 0 and e["conversion"]["fp32"] > 0
    assert r["parity"]["engine"]["max_abs_diff"] <= 1e-4  # the fp32 engine, held to eager
    d = r["deployment"]
    assert d["precision"] == "fp16" and d["n"] >= 4 and 0.99 <= d["cosine_min"] <= 1.0
    gates = {g["name"]: g for g in r["gates"]}
    assert gates["min_deploy_cosine"]["passed"] and gates["min_deploy_top1"]["value"] is not None
    # the bundle ships the deployed engine: its initializers are fp16
    engine = onnx.load(str(fp16_bundle / e["file"]), load_external_data=False)
    assert any(i.data_type == F16 for i in engine.graph.initializer)
    assert "Deployed engine vs reference engine" in (fp16_bundle / "report.md").read_text()
    # the portable graph in the bundle is still fp32
    portable = onnx.load(str(fp16_bundle / "model.onnx"), load_external_data=False)
    assert not any(i.data_type == F16 for i in portable.graph.initializer)


def test_fp32_on_the_cpu_has_no_deployment_tier(vit_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST, "--set", "tome.r=3"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    assert r["deployment"] is None and r["engine"]["reference"] is None
    assert r["engine"]["io_binding"] is True and r["engine"]["nodes"]["compressed"] > 0


def test_fp16_true_is_precision_fp16() -> None:
    assert load_recipe("tome-r8", ["backend.fp16=true"]).backend.precision == "fp16"
    assert load_recipe("tome-r8", ["backend.fp16=false"]).backend.precision == "fp32"


def test_convert_keeps_a_graph_without_vtc_nodes_consistent() -> None:
    """A plain MatMul → Softmax graph: everything fp16 inside, fp32 at the edges."""
    x = ir.Value(name="x", shape=ir.Shape([2, 4]), type=ir.TensorType(ir.DataType.FLOAT))
    w = ir.Value(name="w", const_value=ir.tensor(np.eye(4, dtype=np.float32)))
    mm = ir.node("MatMul", [x, w], name="mm")
    sm = ir.node("Softmax", [mm.outputs[0]], {"axis": -1}, name="sm")
    mm.outputs[0].dtype = sm.outputs[0].dtype = ir.DataType.FLOAT
    sm.outputs[0].name = "y"
    g = ir.Graph([x], [sm.outputs[0]], nodes=[mm, sm], initializers=[w],
                 opset_imports={"": 18})
    counts = convert(ir.Model(g, ir_version=10))
    assert counts == {"fp16": 2, "fp32": 0, "casts": 2}
    assert g.outputs[0].name == "y" and g.outputs[0].dtype == ir.DataType.FLOAT
    assert mm.outputs[0].dtype == ir.DataType.FLOAT16
