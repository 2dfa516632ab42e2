"""Full CLIP (vision + text): the zero-shot agreement math on hand-made embeddings, its
gates, and a tiny seeded CLIPModel with a tiny tokenizer end to end (the vision tower
compressed by each encoder method, the text tower exported unchanged, both engines in
the bundle, the zero-shot tier against the eager CLIPModel)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoTokenizer, CLIPModel

from tests.conftest import FAST
from tests.reports import sample_report
from vtc.cli import export_main
from vtc.data.captions import DEFAULT_CAPTIONS
from vtc.recipe import load_recipe
from vtc.report import Report
from vtc.stages.bundle import judge
from vtc.util import sha256_file
from vtc.validate.gates import evaluate_gates
from vtc.validate.zero_shot import agreement, similarity

# ---- the agreement math -----------------------------------------------------------------


def test_identical_embeddings_agree_fully() -> None:
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    res = agreement(img, txt, img.copy(), txt.copy())
    assert res["image_top1_agreement"] == 1.0 and res["caption_top1_agreement"] == 1.0
    assert res["image_cosine_mean"] == pytest.approx(1.0)
    assert res["top_caption_engine"] == res["top_caption_eager"]


def test_a_leaning_image_changes_its_caption_only() -> None:
    """Three images on three axes, one caption each; the engines' third image leans to
    caption 0, so 2 of 3 images keep their top caption; every caption keeps its top
    image (image 2 still scores highest for caption 2)."""
    img, txt = np.eye(3), np.eye(3)
    eng = img.copy()
    eng[2] = [0.9, 0.0, 0.5]
    res = agreement(eng, txt, img, txt)
    assert res["image_top1_agreement"] == pytest.approx(2 / 3)
    assert res["caption_top1_agreement"] == 1.0
    assert res["top_caption_engine"] == [0, 1, 0] and res["top_caption_eager"] == [0, 1, 2]
    assert res["image_cosine_min"] == pytest.approx(0.5 / np.hypot(0.9, 0.5))


def test_scale_does_not_change_rankings() -> None:
    """CLIP's logit scale and the embeddings' norms change no ranking."""
    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(4, 6)), rng.normal(size=(5, 6))
    res = agreement(img * 7.5, txt * 0.01, img, txt)
    assert res["image_top1_agreement"] == 1.0 and res["image_cosine_min"] == pytest.approx(1)
    s = similarity(img, txt)
    assert s.shape == (4, 5) and np.all(np.abs(s) <= 1 + 1e-12)


def _rolled() -> dict[str, Any]:
    """Engines whose image embeddings are permuted: every top caption and every top
    image differs."""
    img, txt = np.eye(4), np.eye(4)
    return agreement(np.roll(img, 1, axis=1), txt, img, txt)


def test_permuted_embeddings_disagree_and_fail_the_gates() -> None:
    res = _rolled()
    assert res["image_top1_agreement"] == 0.0 and res["caption_top1_agreement"] == 0.0
    assert res["image_cosine_mean"] == pytest.approx(0.0)
    base = sample_report()
    assert base.zero_shot is not None
    report = dataclasses.replace(base, zero_shot=dataclasses.replace(base.zero_shot, **res))
    gates = evaluate_gates(report, {"min_zero_shot_image_top1": 0.9,
                                    "min_zero_shot_caption_top1": 0.9,
                                    "min_zero_shot_cosine": 0.99,
                                    "max_text_parity_diff": 1e-4})
    assert [g.passed for g in gates] == [False, False, False, True]
    assert gates[0].value == 0.0


def test_one_image_has_no_caption_ranking() -> None:
    res = agreement(np.ones((1, 3)), np.eye(3), np.ones((1, 3)), np.eye(3))
    assert res["caption_top1_agreement"] is None


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(np.ones((2, 3)), np.eye(3), np.ones((3, 3)), np.eye(3))
    with pytest.raises(ValueError, match="cannot be compared"):
        similarity(np.ones((2, 3)), np.ones((2, 4)))


def test_zero_shot_gates_are_skipped_without_a_text_tower() -> None:
    recipe = load_recipe("tome-r8", ["gates.min_zero_shot_image_top1=0.9",
                                     "gates.max_text_parity_diff=1e-4"])
    report = sample_report(zero_shot=None)
    judge(report, recipe, bench=True)
    assert report.gates_skipped[-2:] == ["min_zero_shot_image_top1", "max_text_parity_diff"]
    assert report.gates_skipped_why["max_text_parity_diff"].startswith("no text tower")
    assert report.passed


# ---- end to end -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_clip import full_clip_dir

    return full_clip_dir(tmp_path_factory.mktemp("clip") / "clip")


def _export(src: Path, out: Path, *argv: str) -> Report:
    res = CliRunner().invoke(export_main, [str(src), "--out", str(out), *FAST, *argv])
    assert res.exit_code == 0, res.output
    return Report.from_dict(json.loads((out / "report.json").read_text()))


@pytest.fixture(scope="session")
def tome_bundle(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("clip-tome") / "b"
    report = _export(clip_dir, out, "--recipe", "tome-r8", "--set", "tome.r=2",
                     "--set", "gates.min_zero_shot_image_top1=0.25",
                     "--set", "gates.max_text_parity_diff=1e-4")
    return out, report


def test_the_bundle_holds_both_towers(tome_bundle: tuple[Path, Report]) -> None:
    out, report = tome_bundle
    for name in ("model.onnx", "model.ort.onnx", "text.onnx", "text.ort.onnx",
                 "tokenizer/tokenizer.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("text.onnx", "text.ort.onnx"):
        assert manifest["files"][name] == sha256_file(out / name)
    text = manifest["text"]
    assert text["graph"] == "text.onnx" and text["engine"] == "text.ort.onnx"
    assert text["inputs"]["input_ids"] == {"shape": ["batch", 12], "dtype": "int64"}  # any batch
    assert text["output"]["shape"] == ["batch", 24]
    assert text["tokenizer"]["tokenizer/tokenizer.json"] == sha256_file(
        out / "tokenizer" / "tokenizer.json")
    assert report.output == "image_embeds"
    assert report.budget.methods == ["tome"] and report.budget.tokens_out < 17
    assert not list(out.parent.glob(".*")), "temp files left beside the bundle"


def test_the_report_holds_zero_shot_agreement(tome_bundle: tuple[Path, Report]) -> None:
    out, report = tome_bundle
    z = report.zero_shot
    assert z is not None
    assert report.inputs.kind == "photos" and z.n_images == 4
    assert z.captions == list(DEFAULT_CAPTIONS) and z.captions_from == "default"
    assert z.text_length == 12 and z.captions_truncated == 0
    for v in (z.image_top1_agreement, z.caption_top1_agreement):
        assert v is not None and 0.0 <= v <= 1.0
    assert -1.0 <= z.image_cosine_min <= z.image_cosine_mean <= 1.0 + 1e-9
    assert z.text_parity.max_abs_diff < 1e-4 and z.text_parity.shape == [16, 24]
    assert len(z.top_caption_engine) == len(z.top_caption_eager) == 4
    assert {"min_zero_shot_image_top1", "max_text_parity_diff"} <= {
        g.name for g in report.gates}
    assert report.passed
    md = (out / "report.md").read_text()
    assert "## Zero-shot agreement (image–text)" in md and "text engine parity" in md


def test_the_shipped_text_engine_matches_the_eager_clip(tome_bundle: tuple[Path, Report],
                                                        clip_dir: Path) -> None:
    """A user's path: the bundle's tokenizer and text engine, against the checkpoint's
    CLIPModel run by HF."""
    out, _ = tome_bundle
    tok = AutoTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    enc = tok(["a photo of a cat", "a photo of a dog"], padding="max_length",
              max_length=12, truncation=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    sess = ort.InferenceSession(str(out / "text.ort.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["text_embeds"], feeds)
    full: Any = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        out_t = full.text_model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        want = full.text_projection(out_t.pooler_output).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("method", ["evit", "pitome"])
def test_other_methods_with_user_captions(method: str, clip_dir: Path, tmp_path: Path) -> None:
    """EViT and PiToMe towers, captions from a file, a shorter text length and a dynamic
    batch: the text graph follows the recipe's export settings."""
    captions = tmp_path / "captions.txt"
    captions.write_text("# mine\na photo of a cat\n\na dog on a plate\n"
                        "a tiny extra photo of a forest of the sea with a city street\n")
    recipe = (["--recipe", "evit-keep70", "--set", "evit.layers=[1]"] if method == "evit"
              else ["--recipe", "pitome-r8", "--set", "pitome.r=2"])
    report = _export(clip_dir, tmp_path / "b", *recipe, "--no-bench", "--captions",
                     str(captions), "--set", "export.text_length=8",
                     "--set", "export.dynamic_batch=true")
    z = report.zero_shot
    assert z is not None and report.budget.methods == [method]
    assert z.captions_from == "file" and z.n_captions == 3 and z.text_length == 8
    assert z.captions_truncated == 1
    assert z.text_parity.max_abs_diff < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "b" / "text.onnx"),
                                providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [["batch", 8], ["batch", 8]]
