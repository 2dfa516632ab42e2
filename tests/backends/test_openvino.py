"""`backend.kind: openvino`: the OpenVINO engine runs vtc's rewritten graphs at parity
with the eager reference on every family and method, in both formulations of a site,
builds a bundle end to end with its IR listed in the manifest, and refuses what it
cannot do in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.conftest import FAST
from tests.test_engine_parity import METHODS, _budget
from tests.tiny import VARIANTS, LazyModels, pixels
from vtc.backends import engines
from vtc.backends.base import BackendUnavailable
from vtc.cli import export_main
from vtc.exporter.eager import run_reference
from vtc.passes import load
from vtc.stages.compress import rewrite as compress
from vtc.util import sha256_file

openvino = pytest.importorskip("openvino", reason="openvino not installed (vtc[openvino])")

from vtc.backends.openvino import OpenVinoGraphError, OpenVinoRunner, read  # noqa: E402


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_openvino_engine_matches_the_eager_reference(tiny: LazyModels, variant: str,
                                                     tmp_path: Path) -> None:
    family, model = tiny.model(variant)
    x = pixels()
    for method, formulation in [(m, f) for m in METHODS for f in ("gather", "compact")]:
        budget = _budget(method, family, model, formulation)
        m = load(tiny.onnx(variant))
        compress(m, budget)
        graph = tmp_path / f"{method}.onnx"
        ir.save(m, graph)
        with OpenVinoRunner(graph, tmp_path / f"{method}.ov.xml") as rt:
            name = rt.output_names[0]
            got = rt.infer({rt.input_names[0]: x.numpy()})[name]
        with torch.no_grad():
            want = run_reference(family, model, x, budget)[name].numpy()
            full = family.wrap_for_export(model)(x)[0].numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, (variant, method, formulation)
        assert np.abs(full - want).max() > 1e-4  # the reduction changed the output
        assert (tmp_path / f"{method}.ov.bin").is_file()


def test_the_runner_keeps_fp32_and_the_requested_threads(tmp_path: Path) -> None:
    rt = OpenVinoRunner(tmp_path / "m.onnx", tmp_path / "m.ov.xml", threads=3,
                        hint="throughput")
    assert rt.config() == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT",
                           "INFERENCE_NUM_THREADS": "3"}


def test_a_bundle_end_to_end_ships_the_ir_and_lists_it(vit_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = CliRunner().invoke(export_main, [
        str(vit_dir), "--recipe", "tome-r8", "--out", str(out), *FAST, "--set", "tome.r=3",
        "--set", "backend.kind=openvino", "--set", "backend.threads=1"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["engine"]["kind"] == "openvino" and rep["engine"]["file"] == "model.ov.xml"
    assert rep["engine"]["providers"][0].startswith("OpenVINO ")
    assert rep["engine"]["io_binding"] is False  # ORT's setting: not claimed for OpenVINO
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4
    assert rep["throughput"]["baseline_ips"] > 0 and rep["throughput"]["compressed_ips"] > 0
    assert rep["recipe"]["backend"]["options"] == {"device": "CPU",
                                                   "performance_hint": "latency"}
    files = json.loads((out / "manifest.json").read_text())["files"]
    for name in ("model.ov.xml", "model.ov.bin", "model.onnx"):
        assert files[name] == sha256_file(out / name)
    # nothing of the reference or baseline engines is left in the bundle
    assert sorted(p.name for p in out.glob("*.ov.*")) == ["model.ov.bin", "model.ov.xml"]
    # the shipped IR computes what the bundle's model.onnx computes in ORT
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    compiled = openvino.Core().compile_model(str(out / "model.ov.xml"), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({0: x})[compiled.outputs[0]]
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(got - s.run(None, {"pixel_values": x})[0]).max() <= 1e-4


def _contrib_graph(path: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu_0"),
             helper.make_node("FusedThing", ["h"], ["y"], name="block3/fused_thing",
                              domain="com.example")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                                  helper.make_opsetid("com.example", 1)]),
              str(path))
    return path


def test_a_graph_openvino_cannot_convert_is_one_line_naming_the_node(tmp_path: Path) -> None:
    graph = _contrib_graph(tmp_path / "bad.onnx")
    with pytest.raises(OpenVinoGraphError) as err:
        engines.get("openvino").lint(graph)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'block3/fused_thing' (com.example.FusedThing) of bad.onnx" in msg
    with pytest.raises(OpenVinoGraphError, match="block3/fused_thing"):
        read(graph)


def test_without_the_package_the_error_names_it(monkeypatch: pytest.MonkeyPatch,
                                                vit_dir: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino → ImportError
    from vtc.backends.openvino import devices

    with pytest.raises(BackendUnavailable, match="needs the openvino package"):
        devices()
    res = CliRunner().invoke(export_main, [
        str(vit_dir), "--recipe", "tome-r8", "--out", str(tmp_path / "b"), *FAST,
        "--set", "backend.kind=openvino"])
    assert res.exit_code == 2
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "pip install openvino" in errors[0], res.output
    assert not (tmp_path / "b").exists()


def test_the_engine_files_are_the_xml_and_its_weights() -> None:
    eng = engines.get("openvino")
    assert [p.name for p in eng.files(Path("model" + eng.suffix))] == ["model.ov.xml",
                                                                       "model.ov.bin"]
