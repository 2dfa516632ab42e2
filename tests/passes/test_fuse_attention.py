"""The fused-attention pass on every family variant and method: every block becomes one
com.microsoft.MultiHeadAttention, and ONNX Runtime's output still matches the unfused
graph and the eager reference; proportional attention and EViT's probability readers
are checked numerically; a masked block is left unfused and says why."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.budgets import evit_budget, pitome_budget, tome_budget
from tests.tiny import IMAGE, VARIANTS, LazyModels, pixels
from vtc.budget import Budget
from vtc.exporter.eager import run_reference
from vtc.exporter.export import export_onnx
from vtc.passes import find_blocks, load
from vtc.passes.emit import Emitter
from vtc.passes.fuse_attention import DOMAIN, OP, fuse_attention, fuse_file
from vtc.passes.graph import static_dims
from vtc.stages.compress import rewrite

METHODS = ["none", "tome", "pitome", "evit", "evit-mean"]


def _budget(method: str, family, model) -> Budget | None:  # type: ignore[no-untyped-def]
    geo = family.geometry(model, IMAGE)
    return {
        "none": lambda: None,
        "tome": lambda: tome_budget(geo, r=3),
        "pitome": lambda: pitome_budget(geo, r=3),
        "evit": lambda: evit_budget(geo, 0.6, [0, 2]),
        "evit-mean": lambda: evit_budget(geo, 0.6, [0, 2], score="mean"),
    }[method]()


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _ops(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_block_fused_and_outputs_match(tiny: LazyModels, variant: str,
                                             method: str) -> None:
    family, model = tiny.model(variant)
    budget = _budget(method, family, model)
    m = load(tiny.onnx(variant))
    if budget is not None:
        rewrite(m, budget)
    n_blocks = len(find_blocks(m))
    x = pixels()
    unfused = _run(m, x.numpy())
    res = fuse_attention(m)
    assert res.blocks == res.fused == n_blocks and res.unfused == {}
    mha = [n for n in m.graph if n.op_type == OP]
    assert len(mha) == n_blocks and {n.domain for n in mha} == {DOMAIN}
    # EViT's score readers get recomputed probabilities in its pruning blocks, nothing else
    assert res.recomputed == (2 if method.startswith("evit") else 0)
    fused = _run(m, x.numpy())
    assert np.abs(fused - unfused).max() <= 1e-4
    if budget is not None:
        name = m.graph.outputs[0].name
        with torch.no_grad():
            want = run_reference(family, model, x, budget)[name].numpy()
        assert np.abs(fused - want).max() <= 1e-4


def _proportional(tiny: LazyModels, on: bool) -> tuple[ir.Model, np.ndarray, np.ndarray]:
    family, model = tiny.model("vit-cls")
    budget = tome_budget(family.geometry(model, IMAGE), r=3, proportional_attention=on)
    m = load(tiny.onnx("vit-cls"))
    rewrite(m, budget)
    x = pixels()
    with torch.no_grad():
        want = run_reference(family, model, x, budget)[m.graph.outputs[0].name].numpy()
    fuse_attention(m)
    return m, _run(m, x.numpy()), want


def test_proportional_attention_rides_the_keys(tiny: LazyModels) -> None:
    """log(s) `[B, 1, 1, N]` depends on the key only: in the blocks after a merge it is one
    more head dimension of q (a 1) and k (log(s) / scale), not an `attention_bias`, and
    the fused engine matches eager with and without it."""
    m_on, got_on, want_on = _proportional(tiny, True)
    m_off, got_off, want_off = _proportional(tiny, False)
    assert np.abs(got_on - want_on).max() <= 1e-4
    assert np.abs(got_off - want_off).max() <= 1e-4
    assert np.abs(want_on - want_off).max() > 1e-4  # the bias changes the result
    on = [n for n in m_on.graph if n.op_type == OP]
    off = [n for n in m_off.graph if n.op_type == OP]
    assert not [n for n in on + off if len(n.inputs) > 5]  # no attention_bias anywhere

    def widths(nodes: list[ir.Node]) -> list[list[int]]:
        return [[(static_dims(v) or [0])[-1] for v in n.inputs[:3]] for n in nodes]  # type: ignore[arg-type]

    assert widths(off) == [[64, 64, 64]] * 3  # 4 heads of 16
    assert widths(on) == [[64, 64, 64]] + [[68, 68, 64]] * 2  # every block after the merge


def test_evit_cls_rows_are_recomputed_only(tiny: LazyModels) -> None:
    """EViT's CLS score reads row 0 of the probabilities: the recomputed Softmax beside
    the fused node is `[B, H, 1, N]`, not `[B, H, N, N]`."""
    family, model = tiny.model("vit-cls")
    m = load(tiny.onnx("vit-cls"))
    rewrite(m, evit_budget(family.geometry(model, IMAGE), 0.6, [0, 2]))
    fuse_attention(m)
    softmax = [n for n in m.graph if n.op_type == "Softmax"]
    assert len(softmax) == 2
    assert all((static_dims(n.outputs[0]) or [0, 0, 0])[2] == 1 for n in softmax)


def test_masked_block_stays_unfused_and_says_why(tiny: LazyModels) -> None:
    """A Where between the QK MatMul and the Softmax (a mask) is not a bias the pass
    proves: that block keeps its Softmax, the others are fused, outputs still match."""
    m = load(tiny.onnx("vit-cls"))
    blk = find_blocks(m)[1]
    logits = blk.softmax.inputs[0]
    assert logits is not None
    em = Emitter(m.graph, "mask")
    keep = em.const(np.ones(static_dims(logits), dtype=bool), bool)
    masked = em.op("Where", keep, logits, em.const(-1e9, np.float32))
    masked.shape, masked.dtype = logits.shape, logits.dtype
    em.insert_before(blk.softmax)
    blk.softmax.replace_input_with(0, masked)
    x = pixels().numpy()
    want = _run(m, x)
    res = fuse_attention(m)
    assert res.fused == 2 and list(res.unfused) == [1] and "Where" in res.unfused[1]
    assert _ops(m)[OP] == 2 and _ops(m)["Softmax"] == 1
    assert np.abs(_run(m, x) - want).max() <= 1e-4


def test_fuse_file_keeps_a_dynamic_batch(tiny: LazyModels, tmp_path: Path) -> None:
    """A symbolic batch stays symbolic: fused at two probe batches, made dynamic again."""
    dyn = tmp_path / "dyn.onnx"
    fam, model = tiny.model("vit-cls")
    export_onnx(fam, model, 2, (IMAGE, IMAGE), dyn, dynamic_batch=True)
    out = tmp_path / "fused.onnx"
    res = fuse_file(dyn, out)
    assert res.fused == res.blocks == 3
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(dyn), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 3, IMAGE, IMAGE)).astype(np.float32)
        got = sess.run(None, {"pixel_values": x})[0]
        assert got.shape[0] == b
        assert np.abs(got - ref.run(None, {"pixel_values": x})[0]).max() <= 1e-4


def test_a_dynamic_batch_compressed_graph_fuses_without_head_copies(tiny: LazyModels,
                                                                    tmp_path: Path) -> None:
    """A dynamic-batch rewrite flattens the linear layers to `[B·N, C]`
    (`passes.dynamic_batch`); the fused node still reads q, k, v and writes its output
    through Reshapes (views), not head Transposes, and the gather formulation's metric
    reads the key projection, so the fused compressed graph has no Transpose the fused
    uncompressed one lacks (the compact formulation reads Kᵀ and keeps its moves)."""
    from vtc.stages.compress import compress
    from vtc.stages.export import Exported

    dyn = tmp_path / "dyn.onnx"
    fam, model = tiny.model("vit-cls")
    export_onnx(fam, model, 2, (IMAGE, IMAGE), dyn, dynamic_batch=True)
    budget = tome_budget(fam.geometry(model, IMAGE), r=3, formulation="gather")
    comp = compress(Exported(dyn, 2, (IMAGE, IMAGE), 3, True, 18), budget, "auto", tmp_path)
    out, base = tmp_path / "fused.onnx", tmp_path / "base.onnx"
    assert fuse_file(comp.path, out).fused == fuse_file(dyn, base).fused == 3

    def transposes(path: Path) -> int:  # outside the merge sites (their bᵀ is their own)
        return sum(n.op_type == "Transpose" and not (n.name or "").startswith("vtc_tome")
                   for n in load(path, 2).graph)

    assert transposes(out) == transposes(base)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(str(comp.path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        x = np.random.default_rng(b).standard_normal((b, 3, IMAGE, IMAGE)).astype(np.float32)
        got = sess.run(None, {"pixel_values": x})[0]
        assert np.abs(got - ref.run(None, {"pixel_values": x})[0]).max() <= 1e-4
