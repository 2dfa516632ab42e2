"""The rewrite passes on real exports of a tiny ViT (dynamo and TorchScript)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from tests.budgets import evit_budget, pitome_budget, tome_budget
from vtc import methods
from vtc.budget import Geometry
from vtc.passes import GraphError, NoBlocksError, find_blocks, load
from vtc.passes.emit import PORTABLE_OPS
from vtc.passes.graph import mlp_width
from vtc.passes.shape_fixup import _reshape_target
from vtc.stages.compress import rewrite as compress

GEO = Geometry(tokens=17, protected=1, width=64, mlp_width=128, layers=3)


def _run(model: ir.Model | Path, x: np.ndarray) -> np.ndarray:
    blob = ir.to_proto(model).SerializeToString() if isinstance(model, ir.Model) else str(model)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("which", ["vit_onnx", "vit_onnx_ts"])
def test_blocks_found_on_both_exporters(which: str, request: pytest.FixtureRequest) -> None:
    blocks = find_blocks(load(request.getfixturevalue(which)))
    assert [(b.tokens, b.heads, b.width) for b in blocks] == [(17, 4, 64)] * 3
    assert mlp_width(blocks[0]) == 128
    assert all(b.mlp_add is not None for b in blocks)
    # each block's stream enters where the previous one left
    assert all(blocks[i + 1].x_in is blocks[i].x_out for i in range(2))


def test_r0_is_identity(vit_onnx: Path, pixels: np.ndarray) -> None:
    m = load(vit_onnx)
    res = compress(m, tome_budget(GEO, r=0))
    assert res.sites == 0
    np.testing.assert_array_equal(_run(m, pixels), _run(vit_onnx, pixels))


def _new_ops(m: ir.Model) -> set[str]:
    return {n.op_type for n in m.graph if (n.name or "").startswith("vtc_")}


@pytest.mark.parametrize("method", ["tome", "evit", "pitome"])
def test_rewrite_is_static_portable_and_checked(vit_onnx: Path, pixels: np.ndarray,
                                                method: str) -> None:
    budget = {"tome": lambda: tome_budget(GEO, r=[4, 3, 2]),
              "evit": lambda: evit_budget(GEO, 0.5, [0, 2]),
              "pitome": lambda: pitome_budget(GEO, r=[4, 3, 2])}[method]()
    m = load(vit_onnx)
    res = compress(m, budget)
    assert res.sites == len(budget.reducing_layers)
    # only the portable ops, and the few a method declares (PiToMe: Elu)
    assert _new_ops(m) and _new_ops(m) <= PORTABLE_OPS | methods.get(method).extra_ops
    assert ("Elu" in _new_ops(m)) == (method == "pitome")
    ops = {n.op_type for n in m.graph}
    assert not ops & {"NonZero", "ScatterElements", "ScatterND"}
    # TopK's K is always an initializer (a constant)
    for n in m.graph:
        if n.op_type == "TopK":
            assert n.inputs[1] is not None and n.inputs[1].const_value is not None
    # the stream entering each block has the budget's static token count
    proto = onnx.shape_inference.infer_shapes(ir.to_proto(m), strict_mode=True)
    blocks = find_blocks(ir.from_proto(proto))
    assert [b.tokens for b in blocks] == budget.tokens_per_layer
    out = _run(m, pixels)
    assert out.shape == (2, 10) and np.isfinite(out).all()
    assert not np.allclose(out, _run(vit_onnx, pixels), atol=1e-6)  # it did change something


@pytest.mark.parametrize("method", ["tome", "evit"])
def test_same_rewrite_on_dynamo_and_torchscript(vit_onnx: Path, vit_onnx_ts: Path,
                                                pixels: np.ndarray, method: str) -> None:
    budget = tome_budget(GEO, r=3) if method == "tome" else evit_budget(GEO, 0.6, [1])
    a, b = load(vit_onnx), load(vit_onnx_ts)
    compress(a, budget)
    compress(b, budget)
    np.testing.assert_allclose(_run(a, pixels), _run(b, pixels), atol=1e-4)


def test_no_blocks_is_a_clear_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "mlp", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(NoBlocksError, match="no transformer block"):
        find_blocks(load(path))


def test_reshape_target_uses_spans_not_values() -> None:
    # [B, N, C] → [B, N, H, D] where D == N: only the token entry moves.
    assert _reshape_target([2, 16, 64], [2, 12, 64], [2, 16, 4, 16], [2, 16, -1, 16], "r") == [
        2, 12, -1, 16]
    # Kᵀ folded over heads: [B·H, D, N] → [B, H, D, N] with D == N.
    assert _reshape_target([8, 16, 16], [8, 16, 12], [2, 4, 16, 16], [2, 4, 16, 16], "r") == [
        2, 4, 16, 12]
    # token axis merged into the batch: [B, N, C] → [B·N, C]
    assert _reshape_target([2, 17, 64], [2, 9, 64], [34, 64], [34, 64], "r") == [18, 64]
    # -1 entries are left alone
    assert _reshape_target([2, 17, 64], [2, 9, 64], [2, 17, 4, 16], [2, -1, 4, 16], "r") == [
        2, -1, 4, 16]
    with pytest.raises(GraphError, match="splits the token axis"):
        _reshape_target([2, 16, 64], [2, 12, 64], [2, 4, 4, 64], [2, 4, 4, 64], "grid")
    # nn.MultiheadAttention, sequence-first: tokens folded with the batch, [N·B, C] → [N, B, C]
    assert _reshape_target([136, 32], [104, 32], [17, 8, 32], [17, 8, 32], "r", batch=8) == [
        13, 8, 32]
    assert _reshape_target([136, 32], [104, 32], [8, 17, 32], [8, 17, 32], "r", batch=8) == [
        8, 13, 32]
    # a grid is still a grid when the batch equals one of its sides
    with pytest.raises(GraphError, match="splits the token axis"):
        _reshape_target([4, 16, 64], [4, 12, 64], [4, 4, 4, 64], [4, 4, 4, 64], "g", batch=4)


def _unfold_masks(src: Path, dst: Path) -> int:
    """Rewrite each folded [B, 1, N, N] mask initializer as the exporter writes it at
    sizes its own folding skips: Expand(uniform [1, 1, N, 1], [B, 1, N, N])."""
    m = ir.load(src)
    count = 0
    for v in list(m.graph.initializers.values()):
        arr = v.const_value.numpy() if v.const_value is not None else None
        if arr is None or arr.ndim != 4 or arr.shape[1] != 1 or not (arr == arr.flat[0]).all():
            continue
        small = ir.Value(name=f"{v.name}_small", shape=ir.Shape([1, 1, arr.shape[2], 1]),
                         type=v.type)
        small.const_value = ir.tensor(np.full((1, 1, arr.shape[2], 1), arr.flat[0], arr.dtype),
                                      name=small.name)
        shape = ir.Value(name=f"{v.name}_shape", shape=ir.Shape([4]),
                         type=ir.TensorType(ir.DataType.INT64))
        shape.const_value = ir.tensor(np.array(arr.shape, np.int64), name=shape.name)
        m.graph.register_initializer(small)
        m.graph.register_initializer(shape)
        node = ir.node("Expand", [small, shape], name=f"{v.name}_expand")
        m.graph.insert_before(next(iter(m.graph)), node)
        v.replace_all_uses_with(node.outputs[0])
        count += 1
    ir.save(m, dst)
    return count


def test_large_masks_are_shrunk_not_folded(vit_onnx: Path, pixels: np.ndarray, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """At a large batch the exporter leaves the [B, 1, N, N] mask as an Expand of a
    uniform constant, too big to fold; prepare shrinks it to [1, 1, 1, 1] instead,
    so the shape fix-up never meets a computed mask that bakes N."""
    from vtc.passes import model_io

    src = tmp_path / "unfolded.onnx"
    assert _unfold_masks(vit_onnx, src) >= 1  # the exporter shares one mask between blocks
    monkeypatch.setattr(model_io, "FOLD_LIMIT", 64)  # the tiny mask (2·17·17) is now "large"
    m = load(src)
    assert not any(n.op_type == "Expand" for n in m.graph)
    compress(m, tome_budget(GEO, r=3))
    monkeypatch.undo()
    ref = load(vit_onnx)
    compress(ref, tome_budget(GEO, r=3))
    np.testing.assert_allclose(_run(m, pixels), _run(ref, pixels), atol=1e-5)


def test_optimizer_runs_without_the_slices_split_rule() -> None:
    """prepare's optimizer skips onnxscript's SlicesSplit (quadratic in the Slices vtc's
    merges emit) while it runs, and puts the table back afterwards."""
    import onnxscript.rewriter as rewriter

    from vtc.passes.model_io import _rules_without_slices_split

    before = rewriter._DEFAULT_REWRITE_RULES
    assert "SlicesSplit" in {getattr(r, "name", None) for r in before}
    with _rules_without_slices_split() as found:
        assert found, "onnxscript moved its rule table: the fast path is off"
        names = [getattr(r, "name", None) for r in rewriter._DEFAULT_REWRITE_RULES]
        assert "SlicesSplit" not in names and len(names) == len(before) - 1
    assert rewriter._DEFAULT_REWRITE_RULES is before


def test_failed_shape_inference_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """ONNX's shape inference failing (here: a Conv fed int64) leaves the model as it is;
    onnx_ir logs that as a warning with a traceback, which a bad input would otherwise
    print above vtc's one error line."""
    import logging

    from onnx import TensorProto, helper

    from vtc.passes.model_io import infer_shapes

    x = helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, None)
    w = helper.make_tensor("w", TensorProto.INT64, [4, 3, 2, 2], [1] * 48)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    with caplog.at_level(logging.WARNING):
        infer_shapes(model)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
