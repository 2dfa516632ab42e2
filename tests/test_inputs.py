"""Inputs from the graph, not assumed: a gray, non-square ViT (HF checkpoint and its
ONNX exports) end to end at batch 1 and 8, `--images` through crop and pad, the
probe datasets at the graph's channels, a graph with two inputs, and EViT's score
on a model without a CLS token."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification

from tests.conftest import _Wrap
from tests.tiny import LazyModels, build_variant, perturb
from vtc.cli import export_main
from vtc.data.images import fit, load_images

H, W = 16, 48  # 2 × 6 patches of 8 px: 12 tokens + CLS
QUICK = ["--set", "validate.samples=8", "--no-bench", "--recipe", "tome-r8",
         "--set", "tome.r=2"]


def gray_vit() -> torch.nn.Module:
    """A tiny seeded 1-channel 16×48 ViT classifier."""
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=(H, W), patch_size=8, num_channels=1,
                    num_labels=5, architectures=["ViTForImageClassification"])
    return perturb(ViTForImageClassification(cfg).eval())


class _TwoInputs(torch.nn.Module):
    """pixel_values and aux, both image-like; aux only shifts the logits."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, pixel_values: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values).logits + aux.mean(dim=(1, 2, 3))[:, None]


def _onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], names: list[str],
          path: Path, dynamo: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=18,
                                     input_names=names, output_names=["logits"], verbose=False)
            assert prog is not None
            prog.save(str(path))
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17,
                              input_names=names, output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def gray(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The gray model as an HF checkpoint, a dynamo and a TorchScript ONNX export (batch
    2), and a two-input ONNX export of a square RGB ViT."""
    root = tmp_path_factory.mktemp("gray")
    model = gray_vit()
    model.save_pretrained(root / "ckpt")
    x = torch.randn(2, 1, H, W)
    _, rgb = build_variant("vit-cls")
    pix = torch.randn(2, 3, 32, 32)
    return {"ckpt": root / "ckpt",
            "dynamo": _onnx(_Wrap(model), (x,), ["pixel_values"], root / "d.onnx", True),
            "ts": _onnx(_Wrap(model), (x,), ["pixel_values"], root / "t.onnx", False),
            "two": _onnx(_TwoInputs(rgb), (pix, pix), ["pixel_values", "aux"],
                         root / "two.onnx", True)}


def _run(src: Path, out: Path, *args: str) -> dict:  # type: ignore[type-arg]
    res = CliRunner().invoke(export_main, [str(src), "--out", str(out), *QUICK, *args])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("batch", [1, 8])
def test_gray_non_square_checkpoint_end_to_end(gray: dict[str, Path], tmp_path: Path,
                                               batch: int) -> None:
    rep = _run(gray["ckpt"], tmp_path / "b", "--batch", str(batch))
    pre = rep["inputs"]["preprocess"]
    assert (pre["name"], pre["channels"], pre["height"], pre["width"]) == (
        "pixel_values", 1, H, W)
    assert len(pre["mean"]) == len(pre["std"]) == 1  # the RGB default, averaged for gray
    assert rep["budget"]["tokens_in"] == 13 and rep["budget"]["tokens_out"] < 13
    assert rep["parity"]["export"]["max_abs_diff"] <= 1e-4
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    # any batch by default: the axis is symbolic, --batch the batch timed and validated
    assert man["shapes"]["input"] == ["batch", 1, H, W] and man["input"] == pre
    steps = json.loads((tmp_path / "b" / "preprocess.json").read_text())
    assert steps["resize"] == "crop" and "gray" in steps["steps"][0]


@pytest.mark.parametrize("exporter", ["dynamo", "ts"])
def test_gray_non_square_onnx_sources(gray: dict[str, Path], tmp_path: Path,
                                      exporter: str) -> None:
    rep = _run(gray[exporter], tmp_path / "b", "--batch", "2")
    pre = rep["inputs"]["preprocess"]
    assert (pre["channels"], pre["height"], pre["width"]) == (1, H, W)
    # the non-square grid (2 × 6 patches) tells the CLS token apart without --protected
    assert rep["budget"]["protected"] == 1 and rep["budget"]["tokens_in"] == 13
    assert rep["fidelity"]["cosine_mean"] > 0.5


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (20, 60)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_images_follow_the_graph_input(gray: dict[str, Path], tmp_path: Path,
                                       resize: str) -> None:
    folder = _photos(tmp_path / "imgs")
    rep = _run(gray["dynamo"], tmp_path / "b", "--batch", "2", "--images", str(folder),
               "--set", f"input.resize={resize}", "--set", "input.mean=[0.5]",
               "--set", "input.std=[0.25]")
    pre = rep["inputs"]["preprocess"]
    assert rep["inputs"]["kind"] == "images" and rep["inputs"]["count"] == 2
    assert pre["resize"] == resize and pre["mean"] == [0.5] and pre["std"] == [0.25]


def test_fit_pads_and_crops_to_height_by_width() -> None:
    white = Image.new("RGB", (10, 10), (255, 255, 255))
    pad = fit(white, (H, W), "pad", channels=1)
    assert pad.shape == (H, W, 1)
    assert pad[:, :15].max() == 0 and pad[:, 33:].max() == 0  # black bars left and right
    assert pad[:, 17:31].min() == 1.0  # the scaled 16 × 16 image in the middle
    crop = fit(white, (H, W), "crop", channels=3)
    assert crop.shape == (H, W, 3) and crop.min() == 1.0  # covers the box, no bars
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert fit(red, 4, "stretch", channels=1)[0, 0, 0] == pytest.approx(76 / 255)  # luma


def test_load_images_gray(tmp_path: Path) -> None:
    x = load_images(_photos(tmp_path / "imgs"), (H, W), [0.0], [1.0], channels=1)
    assert x.shape == (2, 1, H, W) and x.dtype == np.float32


def test_probe_dataset_follows_the_graph_channels(gray: dict[str, Path],
                                                  tmp_path: Path) -> None:
    rep = _run(gray["dynamo"], tmp_path / "b", "--batch", "2", "--set",
               "validate.dataset=lfw-subset", "--set", "validate.probe_train=40",
               "--set", "validate.probe_test=20")
    acc = rep["accuracy"]
    assert acc["n_train"] == 40 and acc["n_test"] == 20
    assert 0 <= acc["baseline_acc"] <= 100 and acc["embedding_cosine_mean"] > 0


def test_two_input_graph_feeds_zeros_to_the_other(gray: dict[str, Path],
                                                  tmp_path: Path) -> None:
    rep = _run(gray["two"], tmp_path / "b", "--batch", "2", "--set",
               "input.name=pixel_values")
    pre = rep["inputs"]["preprocess"]
    assert pre["name"] == "pixel_values"
    assert pre["zero_inputs"] == {"aux": {"shape": [2, 3, 32, 32], "dtype": "float32"}}
    assert rep["budget"]["tokens_in"] == 17 and rep["budget"]["tokens_out"] < 17


def test_evit_mean_score_on_a_model_without_cls(tiny: LazyModels, tmp_path: Path) -> None:
    """(engine parity with score mean: tests/test_engine_parity.py)"""
    res = CliRunner().invoke(export_main, [
        str(tiny.onnx("siglip")), "--out", str(tmp_path / "b"), "--batch", "2", "--set",
        "validate.samples=4", "--no-bench", "--recipe", "evit-keep70", "--set",
        "evit.layers=[0,2]", "--set", "evit.score=mean"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["budget"]["protected"] == 0 and rep["budget"]["scores"] == {"evit": "mean"}
    assert all(lp["params"]["score"] == "mean" for lp in rep["budget"]["layers"]
               if lp["method"] == "evit")
    assert rep["budget"]["tokens_out"] < rep["budget"]["tokens_in"]
    assert "evit ranks tokens by **mean**" in (tmp_path / "b" / "report.md").read_text()
