"""A LLaVA bundle end to end on a tiny model with all three cuts: files, report (schema,
parity, fidelity, cost), `vtc generate`, the torch-free runtime, and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vtc.cli import main
from vtc.cli.export import export_main
from vtc.report_vlm import SCHEMA_PATH

from .conftest import COMBINED

ROOT = Path(__file__).parents[2]


def _image(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_bundle_files_and_report(combined_bundle: Path) -> None:
    names = {p.name for p in combined_bundle.iterdir()}
    assert {"vision.onnx", "embedding.onnx", "decoder.onnx", "decoder.onnx.data",
            "genai_config.json", "tokenizer.json", "generation.json", "manifest.json",
            "report.json", "report.md"} <= names
    assert not [n for n in names if n.startswith(".")]
    report = json.loads((combined_bundle / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    c = report["cuts"]
    assert c["encoder"].startswith("tome") and c["encoder_tokens_out"] == 15
    assert c["visual_tokens_uncut"] == 16 and c["visual_tokens"] == 9
    assert c["lm_layer_tokens"] == [33, 33, 28, 26] and c["flops_ratio"] > 1.0
    gen = report["parity"]["generation"]
    assert gen["tokens_equal"] == 1.0 and gen["first_logits_max_abs_diff"] <= 1e-3
    assert report["fidelity"]["random_weights"] is True
    assert 0.0 <= report["fidelity"]["top1_agreement"] <= 1.0
    assert report["cost"]["prefill_ms"] > 0 and len(report["cost"]["prefill_samples_ms"]) == 2
    assert report["passed"] is True
    manifest = json.loads((combined_bundle / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"decoder.onnx", "decoder.onnx.data", "embedding.onnx",
                                      "genai_config.json", "tokenizer.json"}
    gen_cfg = json.loads((combined_bundle / "generation.json").read_text())
    assert gen_cfg["visual_tokens"] == 9 and gen_cfg["image_start"] == 3


def test_bundle_is_what_onnxruntime_genai_loads(combined_bundle: Path) -> None:
    """genai_config.json names the three graphs under genai's input and output names, and
    genai itself runs them: vision → embedding → the builder's decoder with the cut."""
    import onnx
    import onnxruntime_genai as og

    cfg = json.loads((combined_bundle / "genai_config.json").read_text())["model"]
    assert cfg["vision"]["filename"] == "vision.onnx"
    assert cfg["embedding"]["filename"] == "embedding.onnx"
    assert cfg["decoder"]["filename"] == "decoder.onnx"
    g = onnx.load(str(combined_bundle / "decoder.onnx"), load_external_data=False).graph
    ins = [i.name for i in g.input]
    assert ins[:2] == ["attention_mask", "inputs_embeds"] and "past_key_values.3.value" in ins
    assert [o.name for o in g.output][:2] == ["logits", "present.0.key"]
    assert sum(n.op_type == "GroupQueryAttention" for n in g.node) == 4
    model = og.Model(str(combined_bundle))
    tok = json.loads((combined_bundle / "generation.json").read_text())
    ids = [1, 5, 6, *[tok["image_token_id"]] * tok["visual_tokens"], 7, 8]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 3, do_sample=False)
    gen = og.Generator(model, params)
    named = og.NamedTensors()
    named["input_ids"] = np.asarray([ids], np.int32)
    named["pixel_values"] = np.zeros((1, 3, 32, 32), np.float32)
    named["num_image_tokens"] = np.asarray([tok["visual_tokens"]], np.int64)
    gen.set_inputs(named)
    while not gen.is_done():
        gen.generate_next_token()
    assert len(gen.get_sequence(0)) == len(ids) + 3


def test_weights_are_stored_once(combined_bundle: Path, llava_dir: Path) -> None:
    """The token table lives in embedding.onnx only, the head in decoder.onnx only: the
    bundle's LM bytes are the checkpoint's LM parameters once."""
    import onnx

    from vtc.vlm import llava

    model, _geo = llava.load(llava_dir)
    lm = model.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters()) + model.lm_head.weight.numel()
    emb = onnx.load(str(combined_bundle / "embedding.onnx"))
    counted = sum(int(np.prod(t.dims)) for t in emb.graph.initializer if t.name == "table")
    dec = onnx.load(str(combined_bundle / "decoder.onnx"))
    names = []
    for t in dec.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT and not t.name.startswith(("/vtc", "/model")) \
                and t.name not in ("cos_cache", "sin_cache"):
            counted += int(np.prod(t.dims))
            names.append(t.name)
    assert not [n for n in names if "embed" in n]  # the table is not in the decoder
    assert counted == lm_params


def test_a_bundle_from_before_the_processor_key_still_runs(combined_bundle: Path,
                                                           tmp_path: Path) -> None:
    """generation.json written before `processor`, `runtime` and `decoder` existed (CLIP's
    crop keys at the top): the runtime reads it as a genai-run LLaVA bundle."""
    import shutil

    from vtc.runtime.generate import VlmBundle

    old = tmp_path / "old"
    shutil.copytree(combined_bundle, old)
    cfg = json.loads((old / "generation.json").read_text())
    for k in ("processor", "runtime", "decoder", "max_length", "features_rank"):
        cfg.pop(k)
    (old / "generation.json").write_text(json.dumps(cfg))
    b = VlmBundle.load(old, verified=False)
    assert b.runtime == "onnxruntime-genai" and b.processor["kind"] == "clip"
    px = b.pixels(_image(tmp_path / "a.png"))
    assert px.shape == (1, 3, 32, 32)
    assert len(b.generate(b.prompt_ids("What is it?", max_new_tokens=2), px, 2).tokens) == 2


def test_vtc_generate(combined_bundle: Path, tmp_path: Path) -> None:
    img = _image(tmp_path / "a.png")
    res = CliRunner().invoke(main, ["generate", str(combined_bundle), "--image", str(img),
                                    "--prompt", "What is in the picture?",
                                    "--max-new-tokens", "5"])
    assert res.exit_code == 0, res.output
    assert "tok/s" in res.output and "tokens (" in res.output


_SHIM = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'pydantic'):
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['vtc.runtime.generate', *sys.argv[1:]]
runpy.run_module('vtc.runtime.generate', run_name='__main__', alter_sys=True)
"""


def test_runtime_generates_without_torch(combined_bundle: Path, tmp_path: Path) -> None:
    img = _image(tmp_path / "a.png")
    res = subprocess.run([sys.executable, "-c", _SHIM, str(combined_bundle), "--image",
                          str(img), "--prompt", "Describe the image.", "--max-new-tokens", "4"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    timing = json.loads(res.stderr.strip().splitlines()[-1])
    assert 1 <= len(timing["tokens"]) <= 4


def test_any_prompt_length(combined_bundle: Path, tmp_path: Path) -> None:
    """The prompt is dynamic: a prompt four times the nominal length runs."""
    img = _image(tmp_path / "a.png")
    res = CliRunner().invoke(main, ["generate", str(combined_bundle), "--image", str(img),
                                    "--prompt", "what " * 100, "--max-new-tokens", "3"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(("prompt", "images", "message"), [
    ("what " * 600, 1, "pass this bundle's max_length 512"),
    ("USER: what is <image> ASSISTANT:", 1, "built for an image at token 3"),
    ("USER: <image> <image> what", 1, "holds 2 <image> token(s) but 1 image(s)"),
    ("what", 2, "holds 1 <image> token(s) but 2 image(s)"),
])
def test_generate_bad_input(combined_bundle: Path, tmp_path: Path, prompt: str, images: int,
                            message: str) -> None:
    img = _image(tmp_path / "a.png")
    argv = ["generate", str(combined_bundle), "--prompt", prompt]
    for _ in range(images):
        argv += ["--image", str(img)]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


def _cut_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: _cut_half(b / "decoder.onnx.data"),
     r"decoder\.onnx\.data is corrupt: its sha256"),
    (lambda b: (b / "tokenizer.json").write_text("{}"), r"tokenizer\.json is corrupt"),
    (lambda b: (b / "manifest.json").unlink(), r"manifest\.json: FileNotFoundError; a vtc "
                                               "bundle lists its files' sha256 there"),
], ids=["truncated decoder", "tokenizer changed", "no manifest"])
def test_generate_names_a_damaged_bundle_file(combined_bundle: Path, tmp_path: Path,
                                              damage: Any, message: str) -> None:
    """VlmBundle.load checks manifest.json's sha256 of each file it reads: one line, exit
    2, for `vtc generate` and `python -m vtc.runtime.generate` alike."""
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(combined_bundle, copy)
    damage(copy)
    img = _image(tmp_path / "a.png")
    argv = [str(copy), "--image", str(img), "--prompt", "What is it?", "--max-new-tokens", "2"]
    res = CliRunner().invoke(main, ["generate", *argv])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert re.search(message, lines[0]), lines[0]
    run = subprocess.run([sys.executable, "-m", "vtc.runtime.generate", *argv],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and run.stdout == "" and "Traceback" not in run.stderr
    assert re.search(message, run.stderr.strip()) and run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (["visionzip.dominant=40"], "visionzip.dominant is 40"),
    (["fastv.tokens=50", "fastv.keep=null"], "fastv.tokens is 50"),
    (["fastv.layer=9"], "fastv.layer is 9 but the language model has 4 layers"),
    (["backend.precision=int8"], "decoder precision is generate.precision (fp32, fp16 or "
                                  "int4)"),
    (["backend.kind=openvino"], "backend.kind openvino: that engine cannot run a "
                                "vision-language bundle yet (its graphs run in a generation "
                                "loop); kinds that can: ort (onnxruntime-genai)"),
    (["pyramid.stages=[3,9]"], "pyramid.stages reach layer 9 but the language model has 4"),
])
def test_export_refuses_cuts_that_do_not_fit(llava_dir: Path, tmp_path: Path,
                                             sets: list[str], message: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(COMBINED))
    out = tmp_path / "out"
    argv = [str(llava_dir), "--recipe", str(recipe), "--out", str(out), "--no-bench"]
    for s in sets:
        argv += ["--set", s]
    res = CliRunner().invoke(export_main, argv)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_an_unsupported_feature_layer(llava_dir: Path, tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(llava_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(cfg | {"vision_feature_layer": -7}))
    out = tmp_path / "out"
    res = CliRunner().invoke(export_main, [str(ckpt), "--recipe", "llava-fastv", "--out",
                                           str(out)])
    assert res.exit_code == 2 and "vision_feature_layer -7" in res.output
    assert not out.exists()


def test_encoder_source_refuses_vlm_cuts(vit_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "llava-visionzip64",
                                           "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "use a LLaVA checkpoint" in res.output


def test_evit_in_the_tower_then_fastv(llava_dir: Path, tmp_path: Path) -> None:
    """EViT prunes inside the tower (graph pass; its fused token rides along), FastV cuts
    in the LM: engines and the eager reference still agree token for token."""
    from vtc import pipeline
    from vtc.recipe import from_dict
    from vtc.report_vlm import VlmReport

    recipe = {"name": "evit-fastv", "method": ["evit", "fastv"],
              "evit": {"keep_rate": None, "keep": 10, "layers": [0]},
              "fastv": {"layer": 1, "keep": None, "tokens": 5},
              "generate": {"prompt_tokens": 24, "max_new_tokens": 6,
                           "prompts": ["What is in the picture?"]}}
    res = pipeline.run(pipeline.Options(source=str(llava_dir),
                                        recipe=from_dict(recipe, "test"),
                                        out=tmp_path / "out", batch=1, bench=False,
                                        log=lambda _m: None))
    rep = res.report
    assert isinstance(rep, VlmReport) and rep.cost is None
    assert rep.cuts.encoder_tokens_out == 12 and rep.cuts.visual_tokens == 11
    assert rep.cuts.lm_layer_tokens == [35, 29, 29, 29]
    assert rep.parity.generation.tokens_equal == 1.0
    assert rep.parity.generation.first_logits_max_abs_diff <= 1e-3


def test_constant_tensors_in_files_of_their_own_come_along(tmp_path: Path) -> None:
    """Past 2 GB the TorchScript exporter writes even Constant-attribute tensors to files
    of their own; the published graph must not point back into the scratch dir."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from vtc.vlm.export import _inline_attribute_tensors, publish

    c = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "c")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=c),
         helper.make_node("Add", ["x", "k"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save(helper.make_model(graph), str(scratch / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    assert len(list(scratch.iterdir())) == 2  # the graph and the constant's own file
    model = ir.load(str(scratch / "m.onnx"))
    assert _inline_attribute_tensors(model) == 1
    out = tmp_path / "out"
    out.mkdir()
    publish(model, out / "m.onnx", scratch)
    for p in scratch.iterdir():
        if p.is_file():
            p.unlink()
    y = ort.InferenceSession(str(out / "m.onnx")).run(None, {"x": np.ones((2, 3), np.float32)})
    assert y[0].tolist() == [[1, 2, 3], [4, 5, 6]]


# ---- bad input for python -m vtc.runtime.generate that needs a bundle (here: the combined
# bundle is built once per test file; tests/vlm/test_bad_input_vlm.py has the rest)

def _run_generate(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtc.runtime.generate", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_runtime_generate_refuses_an_unreadable_image(combined_bundle: Path,
                                                      tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not an image")
    os.mkfifo(tmp_path / "pipe.png")  # opening it would wait for a writer forever
    for name, why in (("x.png", "not a readable image (UnidentifiedImageError)"),
                      ("pipe.png", "not a regular file (a directory, device or pipe)")):
        res = _run_generate([str(combined_bundle), "--image", str(tmp_path / name),
                             "--prompt", "hi"])
        assert res.returncode == 2 and res.stdout == "", res.stderr
        assert res.stderr.strip() == (f"error: --image {tmp_path / name}: {why}; give a JPEG "
                                      "or PNG file")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_runtime_generate_interrupted_exits_130(sig: int, combined_bundle: Path,
                                                tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM while the module and its imports load (before `main` runs) or
    while it works: exit 130 with one line, never a KeyboardInterrupt traceback."""
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(img)
    interrupted = 0
    for after in (0.2, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "vtc.runtime.generate",
                                 str(combined_bundle), "--image", str(img), "--prompt", "hi",
                                 "--max-new-tokens", "400"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(after)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished first: nothing to interrupt
            continue
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1] == "interrupted: nothing was written", err
        interrupted += 1
    assert interrupted  # at 0.2 s it is still importing: never done by then
