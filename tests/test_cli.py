"""The command line end to end on tiny checkpoints: the bundle contract, the
report schema, gates and exit codes, and every bad input the issue lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FAST
from tests.tiny import build_variant
from vtc import pipeline
from vtc.cli import export_main, main


@pytest.fixture(scope="module")
def bundle(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "out"
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST, "--set", "tome.r=3"])
    assert res.exit_code == 0, res.output
    return out


def _export(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(export_main, list(args))
    return res.exit_code, res.output


def test_bundle_contract(bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert {"baseline.onnx", "model.onnx", "model.ort.onnx", "manifest.json", "report.json",
            "report.md"} <= names
    rep = json.loads((bundle / "report.json").read_text())
    b = rep["budget"]
    assert b["tokens_in"] == 17 and b["tokens_per_layer"] == [17, 14, 11]
    assert b["tokens_out"] == 8 and b["flops_ratio"] > 1.0
    assert rep["parity"]["export"]["max_abs_diff"] <= 1e-4
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4
    assert rep["parity"]["engine"]["cosine_min"] > 0.999
    assert 0 < rep["fidelity"]["cosine_mean"] <= 1.0 + 1e-6
    assert 0 <= rep["fidelity"]["top1_agreement"] <= 1
    th = rep["throughput"]
    for key in ("batch", "baseline_ips", "compressed_ips", "eager_ips", "speedup", "efficiency"):
        assert th[key] is not None and th[key] > 0, key
    assert th["efficiency"] == pytest.approx(th["speedup"] / b["flops_ratio"], rel=1e-3)
    assert rep["passed"] is True and {g["name"] for g in rep["gates"]} == {
        "max_export_diff", "max_parity_diff", "min_top1_agreement"}
    # FAST times 2 rounds: the speed gate is set aside, by name and with the reason
    assert rep["gates_skipped_why"]["min_speedup"].startswith("2 timed rounds")
    assert set(rep["gates_skipped"]) == {"min_speedup", "min_sample_cosine", "min_token_cosine"}
    # the rewrite costs none of the fusions ORT applies to the unmodified graph
    assert rep["fusions"]["baseline"] and rep["fusions"]["lost"] == {}
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["source"]["sha256"] and man["engine"]["providers"] == ["CPUExecutionProvider"]
    assert man["opset"] == 18 and man["engine"]["kind"] == rep["engine"]["kind"] == "ort"
    assert set(man["files"]) == {"baseline.onnx", "model.onnx", "model.ort.onnx",
                                 "config.json", "preprocessor_config.json", "preprocess.json"}
    assert "speedup" in (bundle / "report.md").read_text().lower()


def test_failing_gate_exits_1(vit_dir: Path, tmp_path: Path) -> None:
    code, out = _export(str(vit_dir), "--recipe", "tome-r8", "--out", str(tmp_path / "o"),
                        *FAST, "--set", "tome.r=3", "--set", "gates.min_flops_ratio=50")
    assert code == 1
    assert "FAIL min_flops_ratio" in out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["passed"] is False


def test_onnx_source_and_inspect(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    src = tiny.onnx("vit-cls")
    out = tmp_path / "o"
    code, text = _export(str(src), "--recipe", "evit-keep70", "--set", "evit.layers=[0,2]",
                         "--out", str(out), *FAST)
    assert code == 0, text
    rep = json.loads((out / "report.json").read_text())
    assert rep["parity"]["engine"] is None and rep["gates_skipped"][:2] == [
        "max_export_diff", "max_parity_diff"]
    assert rep["budget"]["tokens_out"] < 17
    res = CliRunner().invoke(main, ["inspect", str(out / "model.onnx")])
    assert res.exit_code == 0, res.output
    assert "3 transformer blocks" in res.output
    tokens = [int(line.split()[1]) for line in res.output.splitlines()[2:]]
    assert tokens == rep["budget"]["tokens_per_layer"]


# --- bad input: one line, exit 2, nothing written -------------------------------------


def _bad(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "out"
    code, text = _export(*args, "--out", str(out), *FAST)
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and text.splitlines()[-1] == errors[0]  # one line, the last
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    return text


def test_missing_source(tmp_path: Path) -> None:
    assert "no such file" in _bad(tmp_path, str(tmp_path / "missing.onnx"))


def test_dir_without_config(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    assert "no config.json" in _bad(tmp_path, str(tmp_path / "ckpt"))


def test_unsupported_model_type(tmp_path: Path) -> None:
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    text = _bad(tmp_path, str(d))
    assert "bert" in text and "vit" in text and "siglip" in text  # lists the supported ones


def test_pickle_needs_flag(tmp_path: Path, vit_dir: Path) -> None:
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text((vit_dir / "config.json").read_text())
    _, model = build_variant("vit-cls")
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert "--allow-pickle" in _bad(tmp_path, str(d))
    code, text = _export(str(d), "--allow-pickle", "--no-bench", "--out",
                         str(tmp_path / "ok"), *FAST, "--set", "tome.r=3")
    assert code == 0, text
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["throughput"] is None


def test_onnx_without_blocks(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 32, 32])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    assert "no transformer block" in _bad(tmp_path, str(tmp_path / "m.onnx"))


@pytest.mark.parametrize(("sets", "needle"), [
    (["--set", "tome.rr=3"], "unknown key 'tome.rr'"),
    (["--set", "tome.r=9"], "impossible"),
    (["--recipe", "evit-keep70", "--set", "evit.keep_rate=1.5"], "keep_rate"),
    (["--recipe", "evit-keep70", "--set", "evit.keep_rate=0"], "keep_rate"),
    (["--recipe", "evit-keep70", "--set", "evit.keep_rate=null", "--set", "evit.keep=40",
      "--set", "evit.layers=[0]"], "evit.keep=40"),
])
def test_bad_recipe(tmp_path: Path, vit_dir: Path, sets: list[str], needle: str) -> None:
    assert needle in _bad(tmp_path, str(vit_dir), *sets)


def test_existing_output_dir(tmp_path: Path, vit_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, text = _export(str(vit_dir), "--out", str(out), *FAST, "--set", "tome.r=3")
    assert code == 2 and "--force" in text
    assert (out / "keep.txt").read_text() == "precious"


def test_interrupted_run_leaves_nothing(tmp_path: Path, vit_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous bundle")

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "validate", boom)
    code, text = _export(str(vit_dir), "--out", str(out), "--force", *FAST, "--set", "tome.r=3")
    assert code == 130 and "interrupted: nothing was written" in text, text
    # the old bundle is untouched and no temporary directory is left behind
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_images_folder(tmp_path: Path, vit_dir: Path) -> None:
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "o"
    code, text = _export(str(vit_dir), "--images", str(imgs), "--no-bench", "--out", str(out),
                         *FAST, "--set", "tome.r=3")
    assert code == 0, text
    rep = json.loads((out / "report.json").read_text())
    assert rep["inputs"]["kind"] == "images" and rep["inputs"]["count"] == 3
    # 3 images in static batches of 2: the padded repeat is run but not scored
    assert rep["fidelity"]["n"] == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    text = _bad(tmp_path, str(vit_dir), "--images", str(empty), "--set", "tome.r=3")
    assert "--images" in text and "[1/7]" not in text  # refused before any work


def test_optimum_style_onnx_source(tmp_path: Path, vit_dir: Path, bundle: Path) -> None:
    """A TorchScript export with symbolic batch/height/width (as optimum-cli writes
    it) compresses once the resolution is given, and matches the HF-dir engine."""
    import onnxruntime as ort
    from transformers import ViTForImageClassification

    from tests.conftest import export

    src = export(ViTForImageClassification.from_pretrained(vit_dir).eval(),
                 tmp_path / "optimum.onnx", dynamo=False, dynamic_axes=True)
    text = _bad(tmp_path, str(src), "--set", "tome.r=3")
    assert "export.image_size" in text
    out = tmp_path / "o"
    code, text = _export(str(src), "--out", str(out), "--no-bench", *FAST, "--set", "tome.r=3",
                         "--set", "export.image_size=32")
    assert code == 0, text
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    outs = []
    for d in (out, bundle):
        s = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        outs.append(s.run(None, {"pixel_values": x})[0])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-4)


def test_dynamic_batch_bundle(tmp_path: Path, vit_dir: Path) -> None:
    """export.dynamic_batch: the engines accept any batch and still match eager."""
    import onnxruntime as ort
    from transformers import ViTForImageClassification

    out = tmp_path / "o"
    code, text = _export(str(vit_dir), "--out", str(out), "--no-bench", *FAST,
                         "--set", "tome.r=3", "--set", "export.dynamic_batch=true")
    assert code == 0, text
    rep = json.loads((out / "report.json").read_text())
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4 and rep["graph"]["batch_constants"]
    assert rep["fusions"]["lost"] == {}
    man = json.loads((out / "manifest.json").read_text())
    assert man["shapes"]["input"][0] == "batch" and man["shapes"]["dynamic_batch"] is True
    model = ViTForImageClassification.from_pretrained(vit_dir).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    full = model(torch.from_numpy(x)).logits.detach().numpy()
    for name in ("baseline.onnx", "model.onnx", "model.ort.onnx"):
        s = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        got = s.run(None, {"pixel_values": x})[0]
        assert got.shape == (3, 10)
        if name == "baseline.onnx":
            np.testing.assert_allclose(got, full, atol=1e-4)


def test_dynamic_batch_needs_a_dynamic_source(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    text = _bad(tmp_path, str(tiny.onnx("vit-cls")), "--set", "tome.r=3",
                "--set", "export.dynamic_batch=true")
    assert "static batch" in text


def test_no_bench_counts_its_steps_and_says_what_was_not_measured(vit_dir: Path,
                                                                  tmp_path: Path) -> None:
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(tmp_path / "o"), *FAST, "--set", "tome.r=2",
                                           "--no-bench"])
    assert res.exit_code == 0, res.output
    steps = [ln for ln in res.stderr.splitlines() if ln.startswith("[")]
    assert steps[-1].startswith("[6/6] bundle complete") and len(steps) == 6
    assert "speedup  not measured (--no-bench)" in res.stdout and "n/a" not in res.stdout


def test_repeated_sigterm_exits_130_and_leaves_nothing(vit_dir: Path, tmp_path: Path) -> None:
    """Signals 20-50 ms apart during the build: one unwind, exit 130, no temp dir or lock."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vtc.cli import export_main; export_main()", str(vit_dir),
         "--out", str(out), *FAST, "--set", "validate.repeats=400", "--set", "tome.r=2"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "VTC_CRASH_DIR": str(tmp_path)})
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the build is well under way
        if line.startswith("[4/7] compiling"):
            break
    for _ in range(6):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.03)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no bundle, temp dir or lock
