"""Fused attention as an engine capability, end to end: ORT engines (both) carry one
MultiHeadAttention per block and lose no fusion; the bundle's model.onnx stays portable
ONNX; `backend.fuse_attention: false` builds the unfused engines, which agree with the
fused ones; TensorRT is never handed com.microsoft ops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.backends import engines
from vtc.backends.ort import op_counts
from vtc.cli import export_main
from vtc.passes.fuse_attention import DOMAIN, OP

BLOCKS = 3  # the tiny ViT's depth


def _bundle(vit_dir: Path, out: Path, recipe: str, *sets: str) -> dict:  # type: ignore[type-arg]
    args = [str(vit_dir), "--recipe", recipe, "--out", str(out), *FAST, "--no-bench"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(export_main, args)
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def _domains(path: Path) -> set[str]:
    return {n.domain for n in onnx.load(str(path), load_external_data=False).graph.node}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"pixel_values": x})[0])


@pytest.fixture(scope="module")
def bundles(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fused")
    runs = {
        "tome": ("tome-r8", ["tome.r=3"]),
        # static batch: unfused, the dynamic-batch compressed engine loses one
        # SkipLayerNormalization (docs/limits.md); the fused default keeps every fusion
        "tome-unfused": ("tome-r8", ["tome.r=3", "backend.fuse_attention=false",
                                     "export.dynamic_batch=false"]),
        "tome-static": ("tome-r8", ["tome.r=3", "export.dynamic_batch=false"]),
        "pitome": ("pitome-r8", ["pitome.r=3"]),
        "evit": ("evit-keep70", ["evit.layers=[0,2]"]),
    }
    for name, (recipe, sets) in runs.items():
        _bundle(vit_dir, root / name, recipe, *sets)
    return {name: root / name for name in runs}


@pytest.mark.parametrize("name", ["tome", "pitome", "evit"])
def test_both_engines_fuse_every_block_and_lose_nothing(bundles: dict[str, Path],
                                                        name: str) -> None:
    out = bundles[name]
    rep = json.loads((out / "report.json").read_text())
    fus = rep["fusions"]
    assert fus["baseline"][OP] == fus["compressed"][OP] == BLOCKS
    assert fus["lost"] == {}
    # every MLP's erf GELU fused in both engines (passes.gelu_form), dynamic batch included
    for side in ("baseline", "compressed"):
        assert fus[side].get("Gelu", 0) + fus[side].get("BiasGelu", 0) == BLOCKS, fus[side]
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4 and rep["passed"] is True
    # the portable graph has no contrib op; the engine file has the fused node
    assert _domains(out / "model.onnx") <= {"", "ai.onnx"}
    assert DOMAIN in _domains(out / "model.ort.onnx")
    assert {p.name for p in out.iterdir()} >= {"baseline.onnx", "model.onnx", "model.ort.onnx"}
    assert not [p for p in out.iterdir() if "fused" in p.name]


def test_fuse_attention_false_builds_unfused_engines_that_agree(
        bundles: dict[str, Path]) -> None:
    off, on = bundles["tome-unfused"], bundles["tome"]
    rep = json.loads((off / "report.json").read_text())
    assert OP not in rep["fusions"]["baseline"] and OP not in rep["fusions"]["compressed"]
    assert rep["fusions"]["lost"] == {} and rep["recipe"]["backend"]["fuse_attention"] is False
    assert op_counts(off / "model.ort.onnx").get(OP) is None
    assert op_counts(on / "model.ort.onnx")[OP] == BLOCKS
    # the LayerNorm fusions ORT makes do not depend on the attention rewrite (like with like:
    # both static)
    fused = json.loads((bundles["tome-static"] / "report.json").read_text())["fusions"][
        "compressed"]
    for op in ("LayerNormalization", "SkipLayerNormalization"):
        assert fused.get(op) == rep["fusions"]["compressed"].get(op)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.abs(_run(on / "model.ort.onnx", x) - _run(off / "model.ort.onnx", x)).max() <= 1e-4


def test_the_capability_is_the_engines_not_a_name() -> None:
    assert engines.get("ort").fuses_attention is True
    assert engines.get("tensorrt").fuses_attention is False
