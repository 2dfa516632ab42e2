"""`vtc lint-trt` and the lint table (`vtc.backends.trt_lint`): each TensorRT 10 parser
limit on a small hand-made graph, the command's exit codes, vtc's own graphs linting
clean, and a TensorRT recipe refused (exit 2, naming the node) before any engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

from tests.conftest import FAST
from vtc.backends import trt_lint
from vtc.backends.trt_lint import TOPK_MAX, lint
from vtc.cli import export_main, main
from vtc.report import TrtFinding


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto] | None = None,
           x_shape: list[int | str] | None = None, x_type: int = TP.FLOAT,
           outputs: list[str] | None = None) -> onnx.ModelProto:
    x = oh.make_tensor_value_info("x", x_type, x_shape or [2, 16])
    outs = [oh.make_tensor_value_info(o, TP.UNDEFINED, None) for o in outputs or ["y"]]
    graph = oh.make_graph(nodes, "g", [x], outs, initializer=inits or [])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def _const(name: str, values: list[int] | np.ndarray, dtype: type = np.int64
           ) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _by_node(findings: list[TrtFinding]) -> dict[str, TrtFinding]:
    return {f.node: f for f in findings}


def test_topk_needs_a_constant_k_within_the_limit() -> None:
    ok = _model([oh.make_node("TopK", ["x", "k"], ["y", "i"], name="top", axis=-1)],
                [_const("k", [4])], outputs=["y", "i"])
    assert lint(ok) == []
    big = _model([oh.make_node("TopK", ["x", "k"], ["y", "i"], name="top", axis=-1)],
                 [_const("k", [TOPK_MAX + 1])], x_shape=[2, 5000], outputs=["y", "i"])
    f = _by_node(lint(big))["top"]
    assert f.severity == "error" and str(TOPK_MAX) in f.problem and "K <=" in f.fix
    dyn = _model([oh.make_node("Shape", ["x"], ["s"], name="shape", start=1),
                  oh.make_node("TopK", ["x", "s"], ["y", "i"], name="top_dyn", axis=-1)],
                 outputs=["y", "i"])
    f = _by_node(lint(dyn))["top_dyn"]
    assert f.severity == "error" and "constant" in f.fix
    over_axis = _model([oh.make_node("TopK", ["x", "k"], ["y", "i"], name="top", axis=-1)],
                       [_const("k", [17])], outputs=["y", "i"])
    assert "larger than the axis (16)" in _by_node(lint(over_axis))["top"].problem


def test_constant_node_counts_as_constant() -> None:
    m = _model([oh.make_node("Constant", [], ["k"], name="kc",
                             value=numpy_helper.from_array(np.array([3], np.int64))),
                oh.make_node("TopK", ["x", "k"], ["y", "i"], name="top")], outputs=["y", "i"])
    assert lint(m) == []


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
def test_scatter_with_a_reduction_is_an_error(op: str) -> None:
    idx = _const("idx", np.zeros((2, 16), np.int64) if op == "ScatterElements"
                 else np.zeros((2, 1), np.int64))
    upd = _const("upd", np.ones((2, 16), np.float32), np.float32)
    plain = _model([oh.make_node(op, ["x", "idx", "upd"], ["y"], name="sc")], [idx, upd])
    assert lint(plain) == []
    add = _model([oh.make_node(op, ["x", "idx", "upd"], ["y"], name="sc", reduction="add")],
                 [idx, upd])
    f = _by_node(lint(add))["sc"]
    assert f.severity == "error" and "'add'" in f.problem and f.op == op


def test_nonzero_custom_domain_and_unsupported_ops_are_errors() -> None:
    m = _model([oh.make_node("NonZero", ["x"], ["nz"], name="nz"),
                oh.make_node("Unique", ["x"], ["u"], name="uniq"),
                oh.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused",
                             domain="com.microsoft")], outputs=["nz", "u", "y"])
    m.opset_import.append(oh.make_opsetid("com.microsoft", 1))
    found = _by_node(lint(m))
    assert {found[n].severity for n in ("nz", "uniq", "fused")} == {"error"}
    assert "data-dependent" in found["nz"].problem and "TopK" in found["nz"].fix
    assert "com.microsoft" in found["fused"].problem and "model.onnx" in found["fused"].fix


def test_warnings_argmax_resize_unknown_op_double_and_dynamic_input() -> None:
    m = _model([oh.make_node("ArgMax", ["x"], ["a"], name="am", select_last_index=1),
                oh.make_node("Shape", ["x"], ["xs"]),
                oh.make_node("Cast", ["xs"], ["sc"], to=TP.FLOAT),
                oh.make_node("Resize", ["x", "", "sc"], ["r"], name="rs", mode="cubic"),
                oh.make_node("Cast", ["x"], ["d"], name="to_double", to=TP.DOUBLE),
                oh.make_node("Hardmax", ["x"], ["y"], name="hm")],
               x_shape=["batch", 16], outputs=["a", "r", "d", "y"])
    found = lint(m)
    assert {f.severity for f in found} == {"warning"}
    by = _by_node(found)
    assert "select_last_index" in by["am"].problem and "not known statically" in by["rs"].problem
    assert "not in vtc's TensorRT table" in by["hm"].problem
    assert "FLOAT" in by["to_double"].problem and by["to_double"].op == "dtype"
    assert "--minShapes" in by["x"].fix and by["x"].op == "input"


def test_cubic_resize_only_on_the_innermost_two_dims() -> None:
    def resize(scales: list[float]) -> onnx.ModelProto:
        return _model([oh.make_node("Resize", ["x", "", "sc"], ["r"], name="rs", mode="cubic")],
                      [_const("sc", scales, np.float32)], x_shape=[2, 3, 8, 8],
                      outputs=["r"])

    assert lint(resize([1.0, 1.0, 2.0, 2.0])) == []
    f = _by_node(lint(resize([1.0, 2.0, 2.0, 2.0])))["rs"]
    assert f.severity == "error" and "dims [1, 2, 3]" in f.problem


def test_runtime_axes_and_antialias_are_errors() -> None:
    m = _model([oh.make_node("Shape", ["x"], ["s"], start=0, end=1),
                oh.make_node("Unsqueeze", ["x", "s"], ["u"], name="unsq"),
                oh.make_node("Resize", ["x", "", "sc"], ["r"], name="rs", mode="linear",
                             antialias=1)],
               [_const("sc", [1.0, 2.0], np.float32)], outputs=["u", "r"])
    by = _by_node(lint(m))
    assert by["unsq"].severity == by["rs"].severity == "error"
    assert "axes" in by["unsq"].problem and "antialias" in by["rs"].problem


def test_every_table_entry_is_callable_and_disjoint() -> None:
    assert not set(trt_lint.CHECKS) & trt_lint.UNSUPPORTED
    assert not set(trt_lint.CHECKS) & trt_lint.PLAIN
    assert not trt_lint.PLAIN & trt_lint.UNSUPPORTED


def _save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    clean = _save(_model([oh.make_node("Relu", ["x"], ["y"], name="r")]), tmp_path / "ok.onnx")
    bad = _save(_model([oh.make_node("NonZero", ["x"], ["y"], name="nz")]), tmp_path / "b.onnx")
    res = CliRunner().invoke(main, ["lint-trt", str(clean)])
    assert res.exit_code == 0 and "0 error(s), 0 warning(s)" in res.output
    res = CliRunner().invoke(main, ["lint-trt", str(bad)])
    assert res.exit_code == 1 and res.output.startswith("error   nz (NonZero)")
    res = CliRunner().invoke(main, ["lint-trt", str(bad), "--json"])
    data = json.loads(res.output)
    assert res.exit_code == 1 and data["errors"] == 1 and data["findings"][0]["node"] == "nz"
    res = CliRunner().invoke(main, ["lint-trt", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "no such file" in res.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf\xff" * 8)
    res = CliRunner().invoke(main, ["lint-trt", str(junk)])
    assert res.exit_code == 2 and "not a readable ONNX model" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["lint-trt", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output


@pytest.fixture(scope="module")
def bundles(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lint")
    out: dict[str, Path] = {}
    for recipe, extra in [("none", []), ("tome-r8", ["--set", "tome.r=3"]),
                          ("pitome-r8", ["--set", "pitome.r=3"]),
                          ("evit-keep70", ["--set", "evit.layers=[1]"])]:
        res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", recipe, "--out",
                                               str(root / recipe), *FAST, *extra,
                                               # static: a symbolic batch is a (right)
                                               # warning, the profile trt/build.sh passes
                                               "--set", "export.dynamic_batch=false"])
        assert res.exit_code == 0, res.output
        out[recipe] = root / recipe
    return out


def test_vtc_graphs_lint_clean(bundles: dict[str, Path]) -> None:
    """The baseline and every method's rewrite: no TensorRT finding (the emitter's
    portable op list; TopK's K is an initializer well under the limit)."""
    for recipe, path in bundles.items():
        rep = json.loads((path / "report.json").read_text())
        assert rep["trt_lint"] == {"errors": 0, "warnings": 0, "findings": []}, recipe
        for graph in ("baseline.onnx", "model.onnx"):
            res = CliRunner().invoke(main, ["lint-trt", str(path / graph)])
            assert res.exit_code == 0 and "0 error(s), 0 warning(s)" in res.output, (recipe,
                                                                                      graph)
        assert "## TensorRT lint" in (path / "report.md").read_text()


def test_tensorrt_recipe_with_a_lint_error_stops_before_the_engine(
        vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted limit (every Softmax flagged) through the real lint of the real
    model.onnx: exit 2 naming the node and the fix, and nothing published."""
    def flag(node: onnx.NodeProto, g: trt_lint.Graph) -> list[TrtFinding]:
        return [TrtFinding(node.name, node.op_type, "planted limit", "planted fix", "error")]

    monkeypatch.setitem(trt_lint.CHECKS, "Softmax", flag)
    out = tmp_path / "trt"
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST, "--set", "backend.kind=tensorrt"])
    assert res.exit_code == 2, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("error:"))
    assert "backend.kind tensorrt" in line and "(Softmax): planted limit; fix: planted fix" \
        in line and "vtc lint-trt" in line
    assert not out.exists()
    # the same finding with the ORT engine: recorded in the report, not refused
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["trt_lint"]["errors"] == 3 and rep["trt_lint"]["findings"][0]["fix"] == \
        "planted fix"
    assert "planted limit" in (out / "report.md").read_text()


def test_a_tensorrt_recipe_refuses_a_baseline_error_too(tmp_path: Path) -> None:
    from vtc.errors import InputError
    from vtc.stages import edge

    model = _save(_model([oh.make_node("Relu", ["x"], ["y"], name="r")]), tmp_path / "m.onnx")
    base = _save(_model([oh.make_node("NonZero", ["x"], ["y"], name="nz")]),
                 tmp_path / "baseline.onnx")
    logged: list[str] = []
    assert edge.lint(model, "ort", logged.append, base).errors == 0 and logged == []
    with pytest.raises(InputError, match=r"baseline\.onnx breaks .* nz \(NonZero\)"):
        edge.lint(model, "tensorrt", logged.append, base)
    info = edge.lint(base, "ort", logged.append)
    assert info.errors == 1 and "1 error(s)" in logged[0]
