"""The layer-role classifier (`vtc.passes.matmul_roles`) on tiny exports: every weight
MatMul gets the role its module name says (read from the bias initializer beside it, which
the classifier never looks at), per block three attention_in and one each of
attention_out, mlp_in and mlp_out, with the dynamo and the TorchScript exporter, with and
without vtc's fused attention and ToMe."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from tests.budgets import tome_budget
from tests.tiny import IMAGE, LazyModels
from vtc.passes import load
from vtc.passes.fuse_attention import OP, fuse_file
from vtc.passes.matmul_roles import ROLES, classify, count
from vtc.stages.compress import rewrite

# module name in the bias initializer → the role it plays (HF ViT, DeiT, DINOv2, CLIP)
TRUTH = [(r"\.(q_proj|k_proj|v_proj)\.", "attention_in"), (r"\.(o_proj|out_proj)\.",
                                                          "attention_out"),
         (r"\.fc1\.", "mlp_in"), (r"\.fc2\.", "mlp_out"), (r"classifier|pooler", "other")]


def truth(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → role by the module name of the bias its output gets (MatMul + Add, or
    Gemm's third input)."""
    inits = {i.name for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or n.name.startswith("vtc_"):
            continue
        biases = list(n.input[2:]) if n.op_type == "Gemm" else [
            i for r in readers.get(n.output[0], []) if r.op_type == "Add" for i in r.input
            if i in inits]
        for pattern, role in TRUTH:
            if any(re.search(pattern, b) for b in biases):
                out[n.name] = role
    return out


def _graph(tiny: LazyModels, variant: str, tome: bool, fused: bool, tmp: Path) -> Path:
    family, model = tiny.model(variant)
    path = tiny.onnx(variant)
    if tome:
        m = load(path)
        rewrite(m, tome_budget(family.geometry(model, IMAGE), r=3))
        path = tmp / "tome.onnx"
        ir.save(m, str(path))
    if fused:
        fuse_file(path, tmp / "fused.onnx")
        path = tmp / "fused.onnx"
        assert any(n.op_type == OP for n in onnx.load(str(path)).graph.node)
    return path


def _check(model: onnx.ModelProto, layers: int, heads: int) -> None:
    roles = classify(model)
    named = truth(model)
    assert named and set(named) <= set(roles)
    assert {n: roles[n] for n in named} == named
    assert count(roles) == {"attention_in": 3 * layers, "attention_out": layers,
                            "mlp_in": layers, "mlp_out": layers, "other": heads}


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("tome", [False, True], ids=["dense", "tome"])
@pytest.mark.parametrize("variant,heads", [("vit-cls", 1), ("dinov2", 0), ("clip", 0),
                                           ("deit-teacher", 2)])
def test_roles_follow_the_block_structure(tiny: LazyModels, tmp_path: Path, variant: str,
                                          heads: int, tome: bool, fused: bool) -> None:
    _, model = tiny.model(variant)
    path = _graph(tiny, variant, tome, fused, tmp_path)
    _check(onnx.load(str(path)), model.config.num_hidden_layers, heads)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_roles_of_a_torchscript_export(vit_onnx_ts: Path, vit_model: object, tmp_path: Path,
                                       fused: bool) -> None:
    path = vit_onnx_ts
    if fused:
        fuse_file(path, tmp_path / "fused.onnx")
        path = tmp_path / "fused.onnx"
    _check(onnx.load(str(path)), vit_model.config.num_hidden_layers, 1)  # type: ignore[attr-defined]


def test_an_unrecognised_layer_is_other(tiny: LazyModels) -> None:
    """A weight MatMul whose output feeds nothing the rules know (here: the attention
    products rewired to read the block input directly) is `other`, never guessed."""
    m = onnx.load(str(tiny.onnx("vit-cls")))
    roles = classify(m)
    q = next(n for n, r in roles.items() if r == "attention_in")
    node = next(n for n in m.graph.node if n.name == q)
    for n in m.graph.node:  # whoever read the projection now reads its input
        for i, v in enumerate(n.input):
            if v == node.output[0]:
                n.input[i] = node.input[0]
    m.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0],
                                                             onnx.TensorProto.FLOAT, None))
    after = classify(m)
    assert after[q] == "other"
    assert Counter(after.values())["other"] == Counter(roles.values())["other"] + 1
    assert set(after.values()) <= set(ROLES)
