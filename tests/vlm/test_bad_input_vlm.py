"""Bad input on the vision-language side, in the style of tests/test_bad_input.py: each
case exits 2 with exactly one `error:` line naming the problem and the fix, no
traceback, and nothing written beside --out. Every case fails before the decoder is
built (most before the model is loaded), so the table is cheap. Then
`python -m vtc.runtime.generate`'s usage errors (the cases that need a built bundle live
in test_bundle.py, which builds it once)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vtc.cli.export import export_main

ROOT = Path(__file__).parents[2]
LIGHT = ["--set", "generate.rounds=1", "--set", "generate.max_new_tokens=2", "--set",
         "generate.prompts=[hi]", "--no-bench"]


def _config(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(ckpt: Path) -> None:
        cfg = json.loads((ckpt / "config.json").read_text())
        edit(cfg)
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return run


def _pickle_only(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04N.")


# name: (argv after SOURCE, how the checkpoint copy is edited (None: the fixture as it is),
#        regex of the error line)
CASES: dict[str, tuple[list[str], Callable[[Path], None] | None, str]] = {
    # the backend section configures encoder engines; a VLM reads only its kind
    "backend.kind openvino": (["--set", "backend.kind=openvino"], None,
                              r"backend\.kind openvino: that engine cannot run a "
                              r"vision-language bundle yet"),
    "backend.precision int8": (["--set", "backend.precision=int8"], None,
                               r"backend\.precision int8: not supported yet .*generate\.precision"),
    "backend.threads": (["--set", "backend.threads=2"], None,
                        r"backend\.threads: not used by a vision-language bundle"),
    # settings a VLM bundle would silently ignore
    "validate.dataset": (["--set", "validate.dataset=lfw-subset"], None,
                         r"validate\.dataset: not used by a vision-language bundle"),
    "--batch 4": (["--batch", "4"], None, r"--batch: not used by a vision-language bundle"),
    "--protected": (["--protected", "1"], None, r"--protected: not used"),
    "export.image_size": (["--set", "export.image_size=64"], None, r"export\.image_size: not used"),
    "input.channels": (["--set", "input.channels=1"], None, r"input\.channels: not used"),
    "a blank prompt": (["--set", "generate.prompts=['  ']"], None,
                       r"generate\.prompts: prompt 0 is blank"),
    "a quoted number": (["--set", "fastv.keep='0.5'"], None, r"keep='0\.5' is text"),
    "a gate that cannot fail": (["--set", "gates.min_tokens_equal=0"], None,
                                r"gates\.min_tokens_equal=0 can never fail"),
    # the nominal prompt and the new tokens against the LM's 512 positions (after the load)
    "prompt_tokens past the context": (
        ["--set", "generate.prompt_tokens=5000"], None,
        r"generate\.prompt_tokens 5000 \+ 16 visual tokens \+ generate\.max_new_tokens 2 pass "
        r"the decoder's max_length of 512 tokens \(the language model's "
        r"max_position_embeddings\)"),
    # --allow-pickle on a safetensors checkpoint loads the safetensors (then the case fails
    # on the context, past the load: not on a missing pytorch_model.bin)
    "--allow-pickle on safetensors": (["--allow-pickle", "--set", "generate.prompt_tokens=5000"],
                                      None, r"max_length of 512 tokens"),
    # the checkpoint
    "an unsupported vision-language model_type": (
        [], _config(lambda c: c.update(model_type="qwen2_vl")),
        r"model_type 'qwen2_vl' is not supported; vtc exports image encoders \(.*vit\) and "
        r"vision-language models \(llava"),
    "a streamed reference of a pickle checkpoint": (
        ["--allow-pickle", "--set", "generate.stream_lm=true"], _pickle_only,
        r"generate\.stream_lm reads the LM's layers from safetensors files.*convert it to "
        r"safetensors, or set generate\.stream_lm: false"),
    "pickle without --allow-pickle": ([], _pickle_only,
                                      r"only has pickle weights .*--allow-pickle"),
    "text_config missing (a 7B default)": (
        [], _config(lambda c: c.pop("text_config")),
        r"config\.json describes a LlavaForConditionalGeneration of 6,\d{3},\d{3},\d{3} "
        r"parameters, but the safetensors files hold 227,744 values"),
    "tokenizer.json corrupt": ([], lambda d: (d / "tokenizer.json").write_text("{x"),
                               r"tokenizer\.json: not a tokenizer file the tokenizers library "
                               r"reads"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_vlm_input_is_one_line_and_exit_2(name: str, llava_dir: Path,
                                              tmp_path: Path) -> None:
    argv, edit, expected = CASES[name]
    src = llava_dir
    if edit is not None:
        src = tmp_path / "ckpt"
        shutil.copytree(llava_dir, src)
        edit(src)
    work = tmp_path / "work"
    work.mkdir()
    res = CliRunner().invoke(export_main, [str(src), "--recipe", "llava-tiny", *LIGHT, *argv,
                                           "--out", str(work / "out")])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("error:", "internal"))]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert re.search(expected, lines[0]), lines[0]
    assert not list(work.iterdir())  # no bundle, no temp dir, no lock


def test_unreadable_validation_images_are_skipped(tmp_path: Path) -> None:
    """--images of a VLM export: a decompression bomb is skipped like a corrupt file, and a
    folder of nothing else is one error line (not Pillow's exception)."""
    from vtc.errors import InputError
    from vtc.stages.vlm import _images

    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")
    (tmp_path / "bad.jpg").write_bytes(b"no")
    with pytest.raises(InputError, match="no readable image"):
        _images(tmp_path, 1)
    Image.new("RGB", (20, 20), "red").save(tmp_path / "ok.png")
    assert len(_images(tmp_path, 3)) == 3


def test_an_image_token_the_template_does_not_encode_is_named(llava_dir: Path) -> None:
    from vtc.errors import InputError
    from vtc.stages.vlm import image_start

    assert image_start(llava_dir / "tokenizer.json", 319) == 3
    with pytest.raises(InputError, match="does not encode to image_token_id 319"):
        image_start(llava_dir / "tokenizer.json", 319, "USER: <img>\n{prompt} ASSISTANT:")


# ---- python -m vtc.runtime.generate: argparse, ranges, interrupts ------------------------

def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtc.runtime.generate", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, **kw)


@pytest.mark.parametrize(("extra", "says"), [
    (["--max-new-tokens", "0"], r"argument --max-new-tokens: 0 is not in 1\.\.4096"),
    (["--max-new-tokens", "abc"], r"'abc' is not a whole number"),
    (["--temperature", "0.3"], r"unrecognized arguments: --temperature 0\.3"),
    (["--prompt"], r"argument --prompt: expected one argument"),
])
def test_runtime_generate_usage_errors_are_one_line(extra: list[str], says: str,
                                                    tmp_path: Path) -> None:
    argv = ["bundle", "--image", "x.png", "--prompt", "hi", *extra]
    res = _run(argv)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert re.search(says, res.stderr) and "(see 'python -m vtc.runtime.generate --help')" \
        in res.stderr
