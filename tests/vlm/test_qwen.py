"""Qwen2.5-VL bundles end to end on a tiny seeded checkpoint in the real layout: greedy
tokens through the bundle's runtime equal the eager HF model's with the same cuts (4
prompts × 16 tokens, first-step logits ≤ 1e-3) for a cut before the LLM with FastV and a
visual-token exit behind it (vtc.runtime) and for FastV then a PyramidDrop stage (genai);
which runtime runs which bundle; `vtc generate` and the torch-free runtime; bad input,
one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vtc.cli import main
from vtc.cli.export import export_main

from .test_bundle import _SHIM, ROOT

VZ = "qwen2_5_vl-visionzip25"
# every LM cut kind behind a cut before the LLM: 16 → 4 merged tokens, FastV after layer 2
# keeps 2 (layer 1's attention), the exit drops them all from layer 3 on
VZ_ALL = ("qwen2_5_vl-visionzip25-fastv", "method=[visionzip, fastv, exit]", "exit.layer=2")
# on genai: FastV after layer 2 keeps 8, a PyramidDrop stage at layer 3 keeps 4 (its own
# projections' attention), positions kept
FV_PYR = ("qwen2_5_vl-fastv", "method=[fastv, pyramid]", "pyramid.stages=[3]",
          "pyramid.keep=0.5", "pyramid.positions=keep")


def _image(path: Path, size: tuple[int, int] = (112, 112)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _report(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "report.json").read_text())  # type: ignore[no-any-return]


def test_visionzip_fastv_exit_equal_eager_on_vtc_runtime(qwen_bundle: Any) -> None:
    """256 → 64 scaled to the tiny grid: 16 merged tokens → 4 (3 dominant + 1
    contextual), then FastV and the exit inside the LM; the kept tokens keep their M-RoPE
    positions, which genai has no input for after a cut before the LLM, so the bundle
    names onnxruntime and ships no genai_config.json."""
    b = qwen_bundle(*VZ_ALL)
    rep = _report(b)
    gen = rep["parity"]["generation"]
    assert (gen["prompts"], gen["max_new_tokens"]) == (4, 16)
    assert gen["tokens_equal"] == 1.0 and gen["first_logits_max_abs_diff"] <= 1e-3
    assert gen["vision_max_abs_diff"] <= 1e-4
    c = rep["cuts"]
    assert (c["tower_tokens"], c["visual_tokens_uncut"], c["visual_tokens"]) == (16, 16, 4)
    assert c["steps"][0]["params"] == {"dominant": 3, "contextual": 1}
    p = c["prefill_length"]
    assert c["lm_layer_tokens"] == [p, p, p - 2, p - 4]
    assert rep["engine"]["kind"] == "onnxruntime" and rep["passed"] is True
    assert not (b / "genai_config.json").exists()
    cfg = json.loads((b / "generation.json").read_text())
    assert cfg["runtime"] == "onnxruntime" and cfg["processor"]["image_size"] == [112, 112]
    assert cfg["features_rank"] == 2 and cfg["visual_tokens"] == 4


def test_fastv_and_pyramid_equal_eager_on_genai(qwen_bundle: Any) -> None:
    """LM cuts only: genai's Qwen2.5-VL pipeline computes the full grid's positions and
    the decoder's cut pass gathers them ([3, B, S] → [3, B, S']) for the layers behind
    each cut; genai runs the bundle, token for token with the eager model."""
    import onnxruntime_genai as og

    b = qwen_bundle(*FV_PYR)
    rep = _report(b)
    gen = rep["parity"]["generation"]
    assert gen["tokens_equal"] == 1.0 and gen["first_logits_max_abs_diff"] <= 1e-3
    c = rep["cuts"]
    p = c["prefill_length"]
    assert c["visual_tokens"] == 16 and c["lm_layer_tokens"] == [p, p, p - 8, p - 12]
    assert rep["engine"]["kind"] == "onnxruntime-genai"
    cfg = json.loads((b / "genai_config.json").read_text())["model"]
    assert cfg["type"] == "qwen2_5_vl" and cfg["vision"]["spatial_merge_size"] == 2
    og.Model(str(b))  # genai itself loads it (the tests' parity ran through it)


def test_pyramid_renumbering_is_refused_on_mrope(qwen_dir: Path, tmp_path: Path) -> None:
    from .conftest import QWEN_SETS

    argv = [str(qwen_dir), "--recipe", "qwen2_5_vl-pyramid", "--out", str(tmp_path / "o"),
            "--no-bench", "--set", "pyramid.stages=[2]", "--set", "pyramid.positions=compact"]
    for s in QWEN_SETS:
        argv += ["--set", s]
    res = CliRunner().invoke(export_main, argv)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "pyramid renumbers the kept tokens' positions" in lines[0]
    assert "--set pyramid.positions=keep" in lines[0]


def test_the_vision_graph_gives_the_kept_tokens_and_their_positions(qwen_bundle: Any,
                                                                    tmp_path: Path) -> None:
    import onnxruntime as ort

    from vtc.runtime.generate import VlmBundle

    b = qwen_bundle(*VZ_ALL)
    sess = ort.InferenceSession(str(b / "vision.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert sess.get_inputs()[0].shape == [64, 1176]
    bundle = VlmBundle.load(b)
    feats, pos = sess.run(None, {"pixel_values": bundle.pixels(_image(tmp_path / "a.png"))})
    assert feats.shape == (4, 64) and pos.dtype == np.int64
    assert len(set(pos.tolist())) == 4 and 0 <= pos.min() and pos.max() < 16


def test_vtc_generate_and_the_torch_free_runtime(qwen_bundle: Any, tmp_path: Path) -> None:
    b = qwen_bundle(*VZ_ALL)
    img = _image(tmp_path / "a.png", (120, 110))  # Qwen's resize: 112 × 112
    res = CliRunner().invoke(main, ["generate", str(b), "--image", str(img), "--prompt",
                                    "What is in the picture?", "--max-new-tokens", "5"])
    assert res.exit_code == 0, res.output
    run = subprocess.run([sys.executable, "-c", _SHIM, str(b), "--image", str(img),
                          "--prompt", "Describe the image.", "--max-new-tokens", "4"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert 1 <= len(json.loads(run.stderr.strip().splitlines()[-1])["tokens"]) <= 4


def test_an_image_of_another_size_is_refused_naming_the_built_one(qwen_bundle: Any,
                                                                  tmp_path: Path) -> None:
    b = qwen_bundle(*VZ_ALL)
    img = _image(tmp_path / "wide.png", (300, 120))
    for argv in (["generate", str(b)], None):
        if argv is not None:
            res = CliRunner().invoke(main, [*argv, "--image", str(img), "--prompt", "What?"])
            code, err = res.exit_code, res.output
        else:
            run = subprocess.run([sys.executable, "-m", "vtc.runtime.generate", str(b),
                                  "--image", str(img), "--prompt", "What?"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=120)
            code, err = run.returncode, run.stderr
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "resizes to 308×112 px for Qwen2.5-VL, 44 merged visual tokens" in lines[0]
        assert "built for 112×112 px (16 merged tokens" in lines[0]
        assert "--set generate.image_size=[112,308]" in lines[0]


@pytest.mark.parametrize(("sets", "message"), [
    (["method=[evit, visionzip]", "evit.keep_rate=0.7", "evit.layers=[1]"],
     "evit.score=cls ranks tokens by the CLS token's attention, but this model has no CLS"),
    (["method=[tome, visionzip]", "tome.r=2"],
     "tome cut(s) inside the vision tower's blocks, which vtc does not do for Qwen2.5-VL"),
    (["generate.image_size=100"], "image size 100×100 px is not a multiple of patch × merge"),
    (["visionzip.keep=null", "visionzip.dominant=20"], "visionzip.dominant is 20 but the"),
])
def test_export_refuses_what_qwen_cannot_take(qwen_dir: Path, tmp_path: Path,
                                              sets: list[str], message: str) -> None:
    from .conftest import QWEN_SETS

    out = tmp_path / "out"
    argv = [str(qwen_dir), "--recipe", VZ, "--out", str(out), "--no-bench"]
    for s in [*QWEN_SETS, *sets]:
        argv += ["--set", s]
    res = CliRunner().invoke(export_main, argv)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert message in lines[0], lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
