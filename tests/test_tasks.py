"""The pipeline's task tiers end to end on tiny models: a linear probe on a labelled
dataset (validate.dataset, max_accuracy_drop) and dense-output fidelity with unmerge
on an ONNX source whose head reads the patch grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FAST, tiny_vit
from tests.passes.test_unmerge import GridHead, _export
from vtc.cli import export_main

PROBE = ["--set", "validate.dataset=lfw-subset", "--set", "validate.probe_train=40",
         "--set", "validate.probe_test=40"]


@pytest.fixture(scope="module")
def dense_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _export(GridHead(tiny_vit()).eval(), tmp_path_factory.mktemp("dense") / "d.onnx")


def _export_cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(export_main, list(args))
    return res.exit_code, res.output


def _report(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def test_linear_probe_in_report_and_summary(vit_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    code, text = _export_cli(str(vit_dir), "--recipe", "tome-r8", "--set", "tome.r=3",
                             "--out", str(out), "--no-bench", *FAST, *PROBE)
    assert code == 0, text
    acc = _report(out)["accuracy"]
    assert (acc["n_train"], acc["n_test"], acc["n_classes"]) == (40, 40, 2)
    assert acc["dataset"]["name"] == "lfw-subset"
    assert 0 <= acc["compressed_acc"] <= 100 and 0 <= acc["baseline_acc"] <= 100
    assert acc["drop_points"] == pytest.approx(acc["baseline_acc"] - acc["compressed_acc"])
    assert -1 <= acc["embedding_cosine_min"] <= acc["embedding_cosine_mean"] <= 1
    assert "linear probe, lfw-subset, 40 train / 40 test" in text
    assert "Accuracy (linear probe)" in (out / "report.md").read_text()
    assert _report(out)["inputs"]["kind"] == "photos"  # real images, not noise


def test_accuracy_gate_can_fail(vit_dir: Path, tmp_path: Path) -> None:
    code, text = _export_cli(str(vit_dir), "--recipe", "tome-r8", "--set", "tome.r=3",
                             "--out", str(tmp_path / "b"), "--no-bench", *FAST, *PROBE,
                             "--set", "gates.max_accuracy_drop=-101")
    assert code == 1, text
    assert "FAIL max_accuracy_drop" in text


@pytest.mark.parametrize(("sets", "needle"), [
    (["--set", "gates.max_accuracy_drop=1"], "need validate.dataset"),
    (["--set", "validate.dataset=imagenet"], "unknown dataset 'imagenet'"),
])
def test_probe_recipe_errors(vit_dir: Path, tmp_path: Path, sets: list[str],
                             needle: str) -> None:
    out = tmp_path / "b"
    code, text = _export_cli(str(vit_dir), "--out", str(out), *FAST, *sets)
    assert code == 2 and needle in text, text
    assert not out.exists()


def test_dense_onnx_source_is_unmerged_and_scored(dense_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    code, text = _export_cli(str(dense_onnx), "--recipe", "tome-r8", "--set", "tome.r=2",
                             "--out", str(out), "--no-bench", *FAST)
    assert code == 0, text
    rep = _report(out)
    assert rep["graph"]["unmerge"]["tokens"] == 17
    assert rep["budget"]["tokens_out"] == 11
    d = rep["dense"]
    assert d["n"] == 4 and rep["inputs"]["kind"] == "photos"
    assert -1 <= d["pearson_min"] <= d["pearson_mean"] <= 1
    assert 0 <= d["iou_min"] <= d["iou_mean"] <= 1
    assert "Dense output fidelity" in (out / "report.md").read_text()
    assert "Pearson" in text


def test_dense_gate_can_fail(dense_onnx: Path, tmp_path: Path) -> None:
    code, text = _export_cli(str(dense_onnx), "--recipe", "tome-r8", "--set", "tome.r=2",
                             "--out", str(tmp_path / "b"), "--no-bench", *FAST,
                             "--set", "gates.min_dense_pearson=1.01")
    assert code == 1, text


def test_dense_source_refuses_evit(dense_onnx: Path, tmp_path: Path) -> None:
    code, text = _export_cli(str(dense_onnx), "--recipe", "evit-keep70", "--set",
                             "evit.layers=[1]", "--out", str(tmp_path / "b"), *FAST)
    assert code == 2 and "use a merge method such as tome" in text, text


def test_dense_gates_skipped_for_token_outputs(vit_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    code, text = _export_cli(str(vit_dir), "--recipe", "tome-r8", "--set", "tome.r=3",
                             "--out", str(out), "--no-bench", *FAST,
                             "--set", "gates.min_dense_iou=0.9")
    assert code == 0, text
    rep = _report(out)
    assert rep["dense"] is None and "min_dense_iou" in rep["gates_skipped"]


def test_static_batch_onnx(tmp_path: Path, vit_onnx: Path) -> None:
    """A batch-2 ONNX without --batch builds at 2; an explicit other --batch is an error."""
    fast = [a for a in FAST if a not in ("--batch", "2")]
    code, text = _export_cli(str(vit_onnx), "--out", str(tmp_path / "a"), "--no-bench", *fast,
                             "--set", "tome.r=3")
    assert code == 0, text
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["shapes"]["input"][0] == 2
    code, text = _export_cli(str(vit_onnx), "--out", str(tmp_path / "b"), "--batch", "4",
                             *fast)
    assert code == 2 and "static batch of 2" in text, text


@pytest.fixture(scope="module")
def dense_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Dinov2Model + SaliencyHead checkpoint (architectures: Dinov2WithSaliencyHead),
    laid out as `vtc zoo fetch dinov2-small-saliency` writes the real one."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    from vtc.exporter.dinov2 import DENSE_ARCH
    from vtc.zoo.dinov2_focus import HEAD_CONFIG, HEAD_WEIGHTS, SaliencyHead

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                       image_size=32, patch_size=8, mlp_ratio=2, layerscale_value=0.5,
                       architectures=[DENSE_ARCH])
    path = tmp_path_factory.mktemp("dense-hf") / "dinov2-saliency"
    Dinov2Model(cfg).eval().save_pretrained(path)
    conf = json.loads((path / "config.json").read_text())  # save_pretrained renames it
    (path / "config.json").write_text(json.dumps({**conf, "architectures": [DENSE_ARCH]}))
    kwargs = dict(width=64, channels=[8, 4], patch_size=8)
    head = SaliencyHead(**{**kwargs, "channels": (8, 4)})  # type: ignore[arg-type]
    save_file(head.state_dict(), str(path / HEAD_WEIGHTS))
    (path / HEAD_CONFIG).write_text(json.dumps({"kwargs": kwargs}))
    return path


def test_hf_dense_head_unmerged_matches_eager(dense_hf_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    code, text = _export_cli(str(dense_hf_dir), "--recipe", "tome-r8", "--set", "tome.r=2",
                             "--out", str(out), "--no-bench", *FAST)
    assert code == 0, text
    rep = _report(out)
    assert rep["output"] == "saliency" and rep["source"]["kind"] == "hf"
    assert rep["graph"]["unmerge"]["tokens"] == 17 and rep["budget"]["tokens_out"] == 11
    # the eager reference unmerges too: engine parity holds on the full-resolution map
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4
    assert rep["parity"]["export"]["max_abs_diff"] <= 1e-4
    assert rep["dense"]["n"] == 4


def test_hf_dense_head_refuses_evit(dense_hf_dir: Path, tmp_path: Path) -> None:
    code, text = _export_cli(str(dense_hf_dir), "--recipe", "evit-keep70", "--set",
                             "evit.layers=[1]", "--out", str(tmp_path / "b"), *FAST)
    assert code == 2 and "use a merge method such as tome" in text, text
