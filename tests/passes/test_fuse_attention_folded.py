"""Fused attention on `torch.nn.MultiheadAttention` encoders: heads folded into the
batch (`[B·H, N, N]`) and sequence-first streams (`[N, B, C]`) are fused too, with
ToMe's proportional attention (a `[B·H, 1, N]` bias, folded into the keys) and EViT's
probability readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from tests.torch_encoders import DEPTH, SPECS, Encoder, export
from vtc import passes
from vtc.passes.fuse_attention import OP, fuse_attention
from vtc.passes.graph import static_dims
from vtc.recipe import load_recipe
from vtc.stages.compress import rewrite
from vtc.stages.load import onnx_geometry

SETS = {"tome": ["tome.r=2", "tome.layers=[1]", "tome.proportional_attention=true"],
        "evit": ["evit.keep_rate=0.7", "evit.layers=[1]"]}
RECIPES = {"tome": "tome-r8", "evit": "evit-keep70"}
CASES = [("mha-sf-weights", True), ("tel-pre-bf-nocls", True), ("tel-post-sf", False)]


def _run(m: ir.Model, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"pixel_values": x})[0])


@pytest.mark.parametrize(("variant", "dynamo"), CASES)
def test_folded_and_sequence_first_blocks_fuse(tmp_path: Path, variant: str,
                                               dynamo: bool) -> None:
    spec, batch = SPECS[variant], 4
    src = export(Encoder(spec), tmp_path / "enc.onnx", batch, dynamo)
    x = np.random.default_rng(5).standard_normal(
        (batch, spec.channels, spec.height, spec.width)).astype(np.float32)
    for method in [None, "tome", "evit"]:
        m = passes.load(src, batch)
        blocks = passes.find_blocks(m)
        assert {b.seq_first for b in blocks} == {not spec.batch_first}
        if variant == "mha-sf-weights":
            assert all(b.folded for b in blocks)
        if method is not None:
            extra = ["evit.score=mean"] if method == "evit" and not spec.cls else []
            recipe = load_recipe(RECIPES[method], [*SETS[method], *extra])
            rewrite(m, recipe.budget(onnx_geometry(m, None)), "auto",
                    "merged" if method == "evit" else "unmerge")
        want = _run(m, x)
        res = fuse_attention(m)
        assert res.fused == res.blocks == DEPTH and res.unfused == {}, (method, res)
        assert sum(n.op_type == OP for n in m.graph) == DEPTH
        assert np.abs(_run(m, x) - want).max() <= 1e-4, method
        if method == "tome":  # the log-size bias rides in q and k: one more head dim
            fused = [n for n in m.graph if n.op_type == OP]
            assert not [n for n in fused if len(n.inputs) > 5]
            wide = [n for n in fused if (static_dims(n.inputs[1]) or [0])[-1]  # type: ignore[arg-type]
                    == spec.dim + spec.heads]
            assert len(wide) == DEPTH - 2  # the blocks after the merge in block 1
