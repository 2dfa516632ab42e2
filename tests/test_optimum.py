"""optimum-cli files in and out, and engines that take any batch.

What real optimum writes was checked once by hand (optimum-onnx 0.1.0, optimum 2.1.0,
transformers 4.57.6, onnxruntime 1.32.0, in a venv of their own: optimum-onnx pins
transformers < 4.58, vtc's is 5.x): `optimum-cli export onnx --model DIR --task
image-classification OUT` on a seeded tiny ViTForImageClassification saved with a
ViTImageProcessor (and `--task feature-extraction` on a Dinov2Model with a
BitImageProcessor) writes exactly three files, `model.onnx`, `config.json` (the
checkpoint's `save_pretrained` config: `model_type`, `image_size`, `num_channels`,
`id2label`/`label2id`, …) and `preprocessor_config.json` (the processor's
`save_pretrained`: `image_processor_type`, `do_resize`, `size` {height, width} or
{shortest_edge}, `do_center_crop` + `crop_size` {height, width} for DINOv2, `do_rescale`,
`rescale_factor`, `do_normalize`, `image_mean`, `image_std`, `resample`). The graph is a
TorchScript export (producer "pytorch", opset 18) with one input `pixel_values
[batch_size, num_channels, height, width]` and the output `logits [batch_size, 5]`
(`last_hidden_state [batch_size, 17, …]` for DINOv2). `_optimum_folder` below makes the
same: the same three file names, written by the same `save_pretrained` calls, the
TorchScript exporter with optimum's dynamic-axis names. With vtc's bundle of that real
export, optimum's `ORTModelForImageClassification.from_pretrained(BUNDLE,
file_name="model.ort.onnx")` loaded and gave vtc's logits (max |diff| 4.5e-8 at B = 1
and 5; docs/optimum.md has the commands); CI cannot install that venv, so here the
bundle's files are checked with vtc's transformers (AutoConfig / AutoImageProcessor)
and their documented keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main
from vtc.passes.model_io import unused_initializers
from vtc.recipe import load_recipe
from vtc.source import SourceError
from vtc.stages.inputs import read_hints
from vtc.stages.load import batch_axis
from vtc.util import sha256_file

LABELS = {i: f"kind{i}" for i in range(10)}


class _Logits(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values).logits


def _optimum_folder(vit_dir: Path, out: Path) -> Path:
    """What `optimum-cli export onnx --task image-classification` writes (module
    docstring): model.onnx, config.json, preprocessor_config.json."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    model = ViTForImageClassification.from_pretrained(vit_dir).eval()
    model.config.id2label, model.config.label2id = LABELS, {v: k for k, v in LABELS.items()}
    out.mkdir(parents=True)
    model.config.save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5],
                      image_std=[0.5, 0.5, 0.5]).save_pretrained(out)
    axes = {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height", 3: "width"},
            "logits": {0: "batch_size"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model), (torch.randn(2, 3, 32, 32),), str(out / "model.onnx"),
                          dynamo=False, opset_version=17, input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes=axes)
    return out / "model.onnx"


def _dims(path: Path) -> tuple[list[int | str], list[int | str]]:
    m = onnx.load(str(path), load_external_data=False)
    f = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
         for v in (m.graph.input[0], m.graph.output[0])]
    return f[0], f[1]


@pytest.fixture(scope="module")
def optimum_bundle(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tome on an optimum-cli-shaped folder, no image size given; input.std from the
    recipe (the rest from the files beside model.onnx)."""
    root = tmp_path_factory.mktemp("optimum")
    src = _optimum_folder(vit_dir, root / "optimum_out")
    out = root / "bundle"
    res = CliRunner().invoke(export_main, [str(src), "--recipe", "tome-r8", "--out", str(out),
                                           *FAST, "--no-bench", "--set", "tome.r=3",
                                           "--set", "input.std=[0.25,0.25,0.25]"])
    assert res.exit_code == 0, res.output
    return out


def test_settings_come_from_the_files_beside_the_onnx(optimum_bundle: Path) -> None:
    pre = json.loads((optimum_bundle / "report.json").read_text())["inputs"]["preprocess"]
    assert (pre["height"], pre["width"], pre["resize"]) == (32, 32, "stretch")
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.25] * 3
    assert pre["origin"] == {"image_size": "preprocessor_config.json",
                             "resize": "preprocessor_config.json",
                             "mean": "preprocessor_config.json", "std": "recipe",
                             "labels": "config.json"}
    md = (optimum_bundle / "report.md").read_text()
    assert "preprocessor_config.json" in md
    assert json.loads((optimum_bundle / "preprocess.json").read_text())["origin"] == \
        pre["origin"]


def test_bundle_loads_as_an_hf_model_folder(optimum_bundle: Path) -> None:
    from transformers import AutoConfig, AutoImageProcessor

    cfg = AutoConfig.from_pretrained(optimum_bundle, local_files_only=True)
    assert cfg.model_type == "vit" and cfg.id2label == LABELS and cfg.image_size == 32
    proc = AutoImageProcessor.from_pretrained(optimum_bundle, local_files_only=True)
    assert proc.size == {"height": 32, "width": 32}
    assert list(proc.image_mean) == [0.5] * 3 and list(proc.image_std) == [0.25] * 3
    pixels = proc(images=np.full((40, 48, 3), 255, np.uint8), return_tensors="np")
    assert pixels["pixel_values"].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(pixels["pixel_values"], 2.0, atol=1e-5)  # (1 - .5) / .25
    man = json.loads((optimum_bundle / "manifest.json").read_text())
    for name in ("config.json", "preprocessor_config.json"):
        assert man["files"][name] == sha256_file(optimum_bundle / name)


def test_the_source_batch_axis_name_is_kept_and_any_batch_runs(optimum_bundle: Path) -> None:
    import onnxruntime as ort

    man = json.loads((optimum_bundle / "manifest.json").read_text())
    assert man["shapes"]["input"] == ["batch_size", 3, 32, 32]
    assert man["shapes"]["dynamic_batch"] is True
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    # baseline.onnx is the source as it was (height and width symbolic too)
    assert _dims(optimum_bundle / "baseline.onnx") == (
        ["batch_size", "num_channels", "height", "width"], ["batch_size", 10])
    for name in ("baseline.onnx", "model.onnx", "model.ort.onnx"):
        if name != "baseline.onnx":
            assert _dims(optimum_bundle / name) == (["batch_size", 3, 32, 32],
                                                    ["batch_size", 10])
        s = ort.InferenceSession(str(optimum_bundle / name), providers=["CPUExecutionProvider"])
        five = s.run(None, {"pixel_values": x})[0]
        one = np.concatenate([s.run(None, {"pixel_values": x[i:i + 1]})[0] for i in range(5)])
        assert five.shape == (5, 10)
        np.testing.assert_allclose(one, five, atol=1e-5)


_LOAD = """
import sys, onnxruntime as ort
so = ort.SessionOptions()
so.log_severity_level = 1  # info and up: the unused-initializer line is a warning
for f in sys.argv[1:]:
    ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
"""


def test_engines_load_without_warnings(optimum_bundle: Path) -> None:
    """No graph vtc writes holds an unused initializer, and onnxruntime prints no
    warning (its `[W:` lines, on stderr) when it loads any of them."""
    graphs = sorted(optimum_bundle.glob("*.onnx"))
    assert len(graphs) == 3
    for g in graphs:
        assert unused_initializers(ir.load(g)) == [], g.name
    res = subprocess.run([sys.executable, "-c", _LOAD, *map(str, graphs)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "[I:onnxruntime" in res.stderr  # the log is captured: the check can fail
    assert [line for line in res.stderr.splitlines() if "[W:onnxruntime" in line] == []


def test_unused_initializers_finds_one() -> None:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y],
                          [numpy_helper.from_array(np.ones(1, np.float32), "spare")])
    assert unused_initializers(ir.from_proto(helper.make_model(g))) == ["spare"]


@pytest.fixture(scope="module")
def hf_static(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tome on the tiny ViT checkpoint directory, built at a static batch of 2."""
    out = tmp_path_factory.mktemp("hf") / "o"
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST, "--no-bench", "--set", "tome.r=3",
                                           "--set", "export.dynamic_batch=false"])
    assert res.exit_code == 0, res.output
    return out


def test_hf_bundle_ships_the_checkpoint_config(hf_static: Path, vit_dir: Path) -> None:
    """An HF-dir source without a preprocessor_config.json: config.json is the
    checkpoint's, preprocessor_config.json is made from the resolved preprocessing
    (vtc's crop: shortest edge round(32·256/224) = 37, center crop 32)."""
    from transformers import AutoConfig, AutoImageProcessor

    assert not (vit_dir / "preprocessor_config.json").exists()
    ours, theirs = ({k: v for k, v in AutoConfig.from_pretrained(
        d, local_files_only=True).to_dict().items() if k != "_name_or_path"}
        for d in (hf_static, vit_dir))
    assert ours == theirs and ours["model_type"] == "vit"
    proc = AutoImageProcessor.from_pretrained(hf_static, local_files_only=True)
    pre = json.loads((hf_static / "preprocess.json").read_text())
    assert pre["resize"] == "crop" and pre["origin"]["image_size"] == "config.json"
    assert proc.crop_size == {"height": 32, "width": 32} and proc.size == {"shortest_edge": 37}
    assert list(proc.image_mean) == pre["mean"] and list(proc.image_std) == pre["std"]


def _hints(tmp_path: Path, pre: object, cfg: object | None = None) -> object:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    if cfg is not None:
        (tmp_path / "config.json").write_text(json.dumps(cfg))
    return read_hints(tmp_path)


def test_read_hints_follows_the_processor_keys(tmp_path: Path) -> None:
    h = _hints(tmp_path, {"do_center_crop": True, "crop_size": {"height": 28, "width": 28},
                          "size": {"shortest_edge": 32}, "image_mean": [0.1, 0.2, 0.3],
                          "image_std": [0.4, 0.5, 0.6]}, {"image_size": 99, "num_channels": 1})
    assert (h.size, h.resize, h.mean, h.std, h.channels, h.labels) == (  # type: ignore[attr-defined]
        (28, 28), "crop", [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], 1, None)
    h = _hints(tmp_path, {"size": {"shortest_edge": 32}, "do_normalize": False},
               {"image_size": [24, 40], "id2label": {"1": "b", "0": "a"}})
    assert (h.size, h.resize, h.mean, h.std, h.labels) == (  # type: ignore[attr-defined]
        (24, 40), None, [0.0] * 3, [1.0] * 3, {0: "a", 1: "b"})
    assert h.where == {"image_size": "config.json", "mean": "preprocessor_config.json",  # type: ignore[attr-defined]
                       "std": "preprocessor_config.json", "labels": "config.json"}


def test_read_hints_refuses_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text("{nope")
    with pytest.raises(SourceError, match=r"preprocessor_config\.json: not readable UTF-8 JSON"):
        read_hints(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match="holds a list, not a mapping"):
        read_hints(tmp_path)


@pytest.mark.parametrize(("sets", "want", "logs"), [
    ([], (True, False), False),
    (["export.dynamic_batch=false"], (False, False), False),
    (["export.dynamic_batch=true"], (True, True), False),
    (["backend.kind=tensorrt"], (False, False), True),
    (["backend.cuda_graph=on"], (False, False), True),
    (["backend.kind=tensorrt", "export.dynamic_batch=true"], (True, True), False),
])
def test_batch_axis_policy(sets: list[str], want: tuple[bool, bool], logs: bool) -> None:
    """(dynamic, required): any batch unless the engine wants a static one (said in a
    line) or the recipe chose one."""
    said: list[str] = []
    assert batch_axis(load_recipe("tome-r8", sets), said.append) == want
    assert len(said) == logs and all("export.dynamic_batch: true" in s for s in said)


def test_dynamic_batch_and_a_cuda_graph_are_refused_together() -> None:
    recipe = load_recipe("tome-r8", ["export.dynamic_batch=true", "backend.cuda_graph=on"])
    with pytest.raises(SourceError, match=r"set export\.dynamic_batch: false"):
        batch_axis(recipe)


def test_static_batch_is_a_recipe_choice(hf_static: Path) -> None:
    man = json.loads((hf_static / "manifest.json").read_text())
    assert man["shapes"]["input"] == [2, 3, 32, 32] and man["shapes"]["dynamic_batch"] is False
    assert _dims(hf_static / "model.onnx") == ([2, 3, 32, 32], [2, 10])


def test_a_batch_that_cannot_be_relaxed_falls_back_to_static(
        vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default builds a static batch, saying why, when the rewritten graph cannot
    keep a symbolic one; export.dynamic_batch: true refuses instead (one line, exit 2)."""
    import vtc.passes
    from vtc.passes.graph import GraphError

    def refuse(*_a: object, **_k: object) -> int:
        raise GraphError("Reshape 'r': the batch appears 2 times in its target [2, 2]; vtc "
                         "cannot make its batch dynamic")

    monkeypatch.setattr(vtc.passes, "make_batch_dynamic", refuse)
    args = [str(vit_dir), "--recipe", "tome-r8", *FAST, "--no-bench", "--set", "tome.r=3"]
    res = CliRunner().invoke(export_main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "building a static batch of 2 instead" in res.output
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["shapes"]["input"] == [2, 3, 32, 32]
    for name in ("baseline.onnx", "model.onnx"):
        assert _dims(tmp_path / "a" / name)[0] == [2, 3, 32, 32], name
    res = CliRunner().invoke(export_main, [*args, "--out", str(tmp_path / "b"), "--set",
                                           "export.dynamic_batch=true"])
    assert res.exit_code == 2 and "cannot make its batch dynamic" in res.output
    assert not (tmp_path / "b").exists()
