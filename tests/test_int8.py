"""int8 deployment with fp32 decisions (`vtc.passes.quantize`, `backend.precision: int8`):
the quantized graph keeps every vtc decision node in fp32, and the bundle's parity runs
on the fp32 reference engine while the int8 engine is judged as the deployment tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main
from vtc.passes.matmul_roles import ROLES, classify
from vtc.passes.precision import KEEP_PREFIX
from vtc.passes.quantize import calibration_feeds, int8_nodes, to_int8
from vtc.recipe import RecipeError, load_recipe

LAYERS = 3  # tests.tiny's num_hidden_layers (the vit_dir checkpoint)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, vit_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("int8") / "b"
    res = CliRunner().invoke(export_main, [
        str(vit_dir), "--recipe", "tome-r8", "--out", str(out), *FAST, "--set", "tome.r=3",
        "--set", "backend.precision=int8", "--set", "gates.min_deploy_cosine=0.9",
        "--set", "backend.int8_keep_fp32=[mlp_out]"])
    assert res.exit_code == 0, res.output
    assert "Please consider" not in res.output  # the quantizer's advice is silenced
    return out


def _images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def test_weight_matmuls_are_int8_and_decisions_stay_fp32(int8_bundle: Path,
                                                         tmp_path: Path) -> None:
    src = int8_bundle / "model.onnx"  # the portable fp32 graph
    counts = to_int8(src, tmp_path / "m8.onnx", "pixel_values", _images(6), keep_fp32=[])
    m = onnx.load(str(tmp_path / "m8.onnx"))
    inits = {i.name for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    ops = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]

    def dequantized(name: str) -> bool:
        n = producer.get(name)
        return n is not None and n.op_type == "DequantizeLinear"

    vtc_ops = [n for n in ops if n.name.startswith(KEEP_PREFIX)]
    assert vtc_ops and not any(dequantized(i) for n in vtc_ops for i in n.input)
    weight_ops = [n for n in onnx.load(str(src)).graph.node
                  if n.op_type in ("MatMul", "Gemm") and not n.name.startswith(KEEP_PREFIX)
                  and n.input[1] in {i.name for i in onnx.load(str(src)).graph.initializer}]
    quantized = [n for n in ops if dequantized(n.input[1])]
    # every weight MatMul/Gemm at least (the exporter also folds some weights into
    # constants computed from initializers, which the quantizer takes as weights too)
    assert len(quantized) == counts["int8 MatMul/Gemm"] >= len(weight_ops) > 0
    assert counts["fp32 MatMul/Gemm"] == len(ops) - len(quantized) >= len(vtc_ops)
    # the weights are stored int8 (per output channel), not as a second fp32 copy
    w = {i.name: i for i in m.graph.initializer}
    for n in quantized:
        q = producer[n.input[1]].input[0]
        assert q in inits and w[q].data_type == onnx.TensorProto.INT8
    # the graph's inputs and outputs stay float32
    assert {v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]} == {
        onnx.TensorProto.FLOAT}


def test_the_int8_graph_runs_close_to_fp32(int8_bundle: Path, tmp_path: Path) -> None:
    to_int8(int8_bundle / "model.onnx", tmp_path / "m8.onnx", "pixel_values", _images(8))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y8 = ort.InferenceSession(str(tmp_path / "m8.onnx")).run(None, {"pixel_values": x})[0]
    y32 = ort.InferenceSession(str(int8_bundle / "model.onnx")).run(None, {"pixel_values": x})[0]
    assert y8.dtype == np.float32 and not np.allclose(y8, y32, atol=1e-6)  # it did quantize
    cos = (y8 * y32).sum(1) / np.linalg.norm(y8, axis=1) / np.linalg.norm(y32, axis=1)
    assert cos.min() > 0.95


def test_calibration_batches_follow_the_static_batch() -> None:
    x = onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [4, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3, 8, 8])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["pixel_values"], ["y"])],
                               "g", [x], [y])
    feeds = calibration_feeds(onnx.helper.make_model(g), "pixel_values", _images(6, 8))
    assert [f["pixel_values"].shape[0] for f in feeds] == [4, 4]
    imgs = _images(6, 8)
    np.testing.assert_array_equal(feeds[1]["pixel_values"][2], imgs[4])  # padded by repeat


def test_bundle_parity_on_fp32_reference_int8_judged_as_deployment(int8_bundle: Path) -> None:
    rep = json.loads((int8_bundle / "report.json").read_text())
    e = rep["engine"]
    assert e["precision"] == "int8" and e["reference"]["precision"] == "fp32"
    assert e["conversion"]["int8 MatMul/Gemm"] > 0
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4  # fp32 engines, as always
    d = rep["deployment"]
    assert d["precision"] == "int8" and 0.9 <= d["cosine_mean"] < 1.0
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["min_deploy_cosine"]["passed"]
    assert gates["min_deploy_cosine"]["value"] == pytest.approx(d["cosine_min"]) or \
        gates["min_deploy_cosine"]["value"] == pytest.approx(d["cosine_mean"])
    engine = onnx.load(str(int8_bundle / "model.ort.onnx"), load_external_data=False)
    ops = {n.op_type for n in engine.graph.node}
    assert ops & {"QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat", "QGemm"}, sorted(ops)
    assert "- int8 conversion:" in (int8_bundle / "report.md").read_text()


@pytest.mark.parametrize("keep", [["attention_in", "attention_out"], ["mlp_in"], ["other"]])
def test_kept_roles_stay_fp32_and_the_rest_is_int8(int8_bundle: Path, tmp_path: Path,
                                                   keep: list[str]) -> None:
    src = int8_bundle / "model.onnx"  # as the pipeline wrote it (ToMe, dynamic batch)
    roles = classify(onnx.load(str(src), load_external_data=False))
    per_role = {r: {n for n, x in roles.items() if x == r} for r in ROLES}
    assert {r: len(v) for r, v in per_role.items()} == {
        "attention_in": 3 * LAYERS, "attention_out": LAYERS, "mlp_in": LAYERS,
        "mlp_out": LAYERS, "other": 1}  # the classifier
    counts = to_int8(src, tmp_path / "m8.onnx", "pixel_values", _images(6),
                     keep_fp32=keep)  # type: ignore[arg-type]
    q = int8_nodes(onnx.load(str(tmp_path / "m8.onnx")))
    for r in ROLES:
        if r in keep:
            assert not per_role[r] & q, r
            assert (counts[f"{r} int8"], counts[f"{r} fp32"]) == (0, len(per_role[r]))
        else:
            assert per_role[r] <= q, r
            assert (counts[f"{r} int8"], counts[f"{r} fp32"]) == (len(per_role[r]), 0)
    assert counts["int8 MatMul/Gemm"] == len(q) == sum(
        len(per_role[r]) for r in ROLES if r not in keep)


def test_by_default_the_attention_projections_stay_fp32(int8_bundle: Path,
                                                        tmp_path: Path) -> None:
    counts = to_int8(int8_bundle / "model.onnx", tmp_path / "m8.onnx", "pixel_values",
                     _images(6))
    assert (counts["attention_in int8"], counts["attention_in fp32"]) == (0, 3 * LAYERS)
    assert (counts["attention_out int8"], counts["attention_out fp32"]) == (0, LAYERS)
    assert (counts["mlp_in int8"], counts["mlp_out int8"]) == (LAYERS, LAYERS)


def test_the_recipe_setting_reaches_the_bundle(int8_bundle: Path) -> None:
    conv = json.loads((int8_bundle / "report.json").read_text())["engine"]["conversion"]
    assert (conv["mlp_out int8"], conv["mlp_out fp32"]) == (0, LAYERS)
    assert (conv["mlp_in int8"], conv["mlp_in fp32"]) == (LAYERS, 0)
    assert (conv["attention_in int8"], conv["attention_in fp32"]) == (3 * LAYERS, 0)


def test_keep_fp32_is_an_int8_setting() -> None:
    r = load_recipe("tome-r8", ["backend.precision=int8",
                                "backend.int8_keep_fp32=[mlp_in, attention_in, mlp_in]"])
    assert r.backend.int8_keep_fp32 == ["attention_in", "mlp_in"]  # once each, in order
    assert load_recipe("tome-r8", ["backend.precision=int8"]).backend.int8_keep_fp32 is None
    with pytest.raises(RecipeError, match="int8_keep_fp32 applies to precision int8 only"):
        load_recipe("tome-r8", ["backend.int8_keep_fp32=[attention_in]"])
    with pytest.raises(RecipeError, match=r"int8_keep_fp32\.0"):
        load_recipe("tome-r8", ["backend.precision=int8", "backend.int8_keep_fp32=[fc1]"])
    with pytest.raises(ValueError, match="unknown layer role"):
        to_int8(Path("unused.onnx"), Path("unused8.onnx"), "pixel_values", _images(1),
                keep_fp32=["fc1"])  # type: ignore[list-item]


def test_unnamed_nodes_are_named_so_a_kept_role_can_be_excluded(int8_bundle: Path,
                                                                tmp_path: Path) -> None:
    m = onnx.load(str(int8_bundle / "model.onnx"))
    for n in m.graph.node:
        if not n.name.startswith(KEEP_PREFIX):
            n.name = ""
    onnx.save(m, str(tmp_path / "anon.onnx"))
    counts = to_int8(tmp_path / "anon.onnx", tmp_path / "m8.onnx", "pixel_values", _images(6),
                     keep_fp32=["mlp_in"])
    assert (counts["mlp_in int8"], counts["mlp_in fp32"]) == (0, LAYERS)
    assert counts["mlp_out int8"] == LAYERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anon.onnx", "m8.onnx"]


def test_dynamic_int8_needs_no_images_and_keeps_decisions_fp32(int8_bundle: Path,
                                                              tmp_path: Path) -> None:
    src = int8_bundle / "model.onnx"
    counts = to_int8(src, tmp_path / "d8.onnx", "pixel_values", None, keep_fp32=[],
                     activations="dynamic")
    m = onnx.load(str(tmp_path / "d8.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "QuantizeLinear" not in ops  # no calibrated ranges
    q = int8_nodes(m)
    roles = classify(onnx.load(str(src), load_external_data=False))
    # every projection and MLP layer int8 (quantize_dynamic leaves Gemm, the classifier,
    # fp32), nothing vtc emitted
    assert {n for n, r in roles.items() if r != "other"} <= q
    assert not any(n.startswith(KEEP_PREFIX) for n in q)
    assert counts["int8 MatMul/Gemm"] == len(q)
    assert (counts["mlp_in int8"], counts["attention_in int8"]) == (LAYERS, 3 * LAYERS)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y8 = ort.InferenceSession(str(tmp_path / "d8.onnx")).run(None, {"pixel_values": x})[0]
    y32 = ort.InferenceSession(str(src)).run(None, {"pixel_values": x})[0]
    assert not np.allclose(y8, y32, atol=1e-6)  # it did quantize
    cos = (y8 * y32).sum(1) / np.linalg.norm(y8, axis=1) / np.linalg.norm(y32, axis=1)
    assert cos.min() > 0.95
    with pytest.raises(ValueError, match="static int8 needs calibration images"):
        to_int8(src, tmp_path / "s8.onnx", "pixel_values", None)


def test_int8_activations_is_an_int8_setting() -> None:
    r = load_recipe("tome-r8", ["backend.precision=int8", "backend.int8_activations=dynamic"])
    assert r.backend.int8_activations == "dynamic"
    assert load_recipe("tome-r8", ["backend.precision=int8"]).backend.int8_activations == \
        "static"
    with pytest.raises(RecipeError, match="int8_activations applies to precision int8 only"):
        load_recipe("tome-r8", ["backend.int8_activations=dynamic"])
    with pytest.raises(RecipeError, match="int8_activations"):
        load_recipe("tome-r8", ["backend.precision=int8", "backend.int8_activations=qdq"])


def test_a_dynamic_int8_bundle_runs_integer_kernels(tmp_path: Path, vit_dir: Path) -> None:
    out = tmp_path / "d"
    res = CliRunner().invoke(export_main, [
        str(vit_dir), "--recipe", "tome-r8", "--out", str(out), *FAST, "--set", "tome.r=3",
        "--set", "backend.precision=int8", "--set", "backend.int8_activations=dynamic",
        "--set", "gates.min_deploy_cosine=0.9"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["engine"]["precision"] == "int8" and rep["recipe"]["backend"][
        "int8_activations"] == "dynamic"
    conv = rep["engine"]["conversion"]
    # dynamic's default keeps no role fp32 (static's keeps the attention projections)
    assert (conv["mlp_in int8"], conv["attention_in int8"], conv["attention_in fp32"]) == (
        LAYERS, 3 * LAYERS, 0)
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4  # the fp32 engines
    engine = onnx.load(str(out / "model.ort.onnx"), load_external_data=False)
    ops = {n.op_type for n in engine.graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, sorted(ops)
    assert not ops & {"QLinearMatMul", "QuantizeLinear"}, sorted(ops)


def test_static_int8_is_batch_independent_dynamic_is_not(int8_bundle: Path,
                                                         tmp_path: Path) -> None:
    """Why static stays the default: a dynamic engine measures its ranges on the whole
    batch, so one image's output moves with its batchmates (docs/int8.md)."""
    src = int8_bundle / "model.onnx"
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    loud = x.copy()
    loud[1:] *= 4.0
    first = {}
    for act in ("static", "dynamic"):
        dst = tmp_path / f"{act}.onnx"
        to_int8(src, dst, "pixel_values", _images(8), keep_fp32=[], activations=act)
        s = ort.InferenceSession(str(dst))
        first[act] = [s.run(None, {"pixel_values": b})[0][0] for b in (x, loud)]
    np.testing.assert_array_equal(*first["static"])
    assert not np.allclose(*first["dynamic"], atol=1e-6)
