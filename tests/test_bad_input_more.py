"""More bad input, in the style of test_bad_input.py (exit 2, one `error:` line, no
traceback, nothing written or changed): a bundle whose files no longer match
manifest.json's sha256, for `python -m vtc.runtime` and the bundle's trt/check.py (real
processes, as a device runs them), and `python -m vtc.runtime`'s own flags."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import FAST
from tests.test_bad_input import _bomb_png, _snapshot
from vtc.cli import export_main

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bundle(vit_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tome bundle of the tiny ONNX ViT at static batch 2 (no timing: fast)."""
    out = tmp_path_factory.mktemp("bundle") / "out"
    res = CliRunner().invoke(export_main, [str(vit_onnx), "--out", str(out), *FAST,
                                           "--no-bench", "--set", "tome.r=2"])
    assert res.exit_code == 0, res.output
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def run(b: Path) -> None:
        man = json.loads((b / "manifest.json").read_text())
        edit(man)
        (b / "manifest.json").write_text(json.dumps(man))
    return run


def _list_data_file(man: dict) -> None:
    man["files"]["model.onnx.data"] = "0" * 64  # listed, not shipped


# name: (how the copy is damaged, which runner, extra argv, expected regex of the line)
Runner = str  # "runtime" (python -m vtc.runtime) or "check" (trt/check.py --runtime ort-cpu)
CASES: dict[str, tuple[Callable[[Path], None], Runner, list[str], str]] = {
    "runtime: truncated model.onnx": (lambda b: _truncate(b / "model.onnx"), "runtime", [],
                                      r"model\.onnx is corrupt: its sha256 .* is not the .* "
                                      "manifest.json lists; copy the bundle again"),
    "runtime: preprocess.json edited": (
        lambda b: (b / "preprocess.json").write_text(
            (b / "preprocess.json").read_text().replace('"resize"', '"resize" ', 1)),
        "runtime", [], r"preprocess\.json is corrupt"),
    "runtime: one byte changed": (lambda b: _flip_last_byte(b / "model.onnx"), "runtime", [],
                                  r"model\.onnx is corrupt"),
    "runtime: truncated model.ort.onnx": (lambda b: _truncate(b / "model.ort.onnx"), "runtime",
                                          ["--graph", "model.ort.onnx"],
                                          r"model\.ort\.onnx is corrupt"),
    "runtime: graph not in the manifest": (
        _edit_manifest(lambda m: m["files"].pop("model.onnx")), "runtime", [],
        r"model\.onnx: manifest\.json lists no sha256 for it"),
    "runtime: listed data file missing": (_edit_manifest(_list_data_file), "runtime", [],
                                          r"model\.onnx\.data: no such file, though "
                                          r"manifest\.json lists it"),
    "runtime: manifest without files": (_edit_manifest(lambda m: m.update(files=[1])),
                                        "runtime", [], "manifest.json has no sha256 table"),
    "runtime: manifest missing": (lambda b: (b / "manifest.json").unlink(), "runtime", [],
                                  "not a vtc bundle"),
    "runtime: preprocess.json without a field (an older bundle: not in the manifest)": (
        lambda b: ((b / "preprocess.json").write_text("{}"),
                   _edit_manifest(lambda m: m["files"].pop("preprocess.json"))(b)),
        "runtime", [],
        r"preprocess\.json or manifest\.json lacks a field \(KeyError: 'name'\)"),
    "runtime: --top-k 0": (lambda b: None, "runtime", ["--top-k", "0"],
                           r"--top-k 0: give a whole number ≥ 1"),
    "runtime: --batch -1": (lambda b: None, "runtime", ["--batch", "-1"],
                            r"--batch -1: give a whole number ≥ 1"),
    "runtime: unknown provider": (lambda b: None, "runtime", ["--providers", "FooProvider"],
                                  r"providers FooProvider: not in this onnxruntime"),
    "runtime: --providers empty": (lambda b: None, "runtime", ["--providers", ","],
                                   "--providers is empty"),
    "runtime: only a decompression bomb": (lambda b: None, "runtime", ["--bomb"],
                                            r"--images .*: no readable images"),
    "check.py: truncated model.onnx": (lambda b: _truncate(b / "model.onnx"), "check", [],
                                       r"model\.onnx is corrupt: its sha256"),
    "check.py: samples changed": (lambda b: _flip_last_byte(b / "samples" / "inputs.npz"),
                                  "check", [], r"samples/inputs\.npz is corrupt"),
    "check.py: reference missing": (lambda b: (b / "samples" / "reference.npz").unlink(),
                                    "check", [], r"reference\.npz: no such file, though "
                                    r"manifest\.json lists it"),
    "check.py: samples not in the manifest": (
        _edit_manifest(lambda m: m["edge"].pop("samples/samples.json")), "check", [],
        r"samples\.json: manifest\.json lists no sha256"),
    "check.py: manifest missing": (lambda b: (b / "manifest.json").unlink(), "check", [],
                                   r"manifest\.json: FileNotFoundError"),
    # usage errors: one line naming the flag, as vtc's own commands (not argparse's usage)
    "runtime: --top-k abc": (lambda b: None, "runtime", ["--top-k", "abc"],
                             r"argument --top-k: invalid int value: 'abc' \(see 'python -m "
                             r"vtc\.runtime --help'\)"),
    "runtime: unknown option": (lambda b: None, "runtime", ["--bogus"],
                                "unrecognized arguments: --bogus"),
    "check.py: unknown --runtime": (lambda b: None, "check", ["--runtime", "tpu"],
                                    r"argument --runtime: invalid choice: 'tpu'"),
    "check.py: --seconds nan": (lambda b: None, "check", ["--seconds", "nan"],
                                r"argument --seconds: nan is not a finite duration ≥ 0"),
    "check.py: --seconds -1": (lambda b: None, "check", ["--seconds", "-1"],
                               r"argument --seconds: -1 is not a finite duration ≥ 0"),
    "check.py: --gate -1": (lambda b: None, "check", ["--gate", "-1"],
                            r"argument --gate: -1 is not a finite limit ≥ 0"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_damaged_bundle_is_named_in_one_line(name: str, bundle: Path, tmp_path: Path) -> None:
    damage, runner, extra, expected = CASES[name]
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    damage(copy)
    images = tmp_path / "imgs"
    images.mkdir()
    if "--bomb" in extra:  # the folder holds only an image Pillow refuses to open
        extra = [a for a in extra if a != "--bomb"]
        (images / "bomb.png").write_bytes(_bomb_png())
    else:
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(images / "a.png")
    before = _snapshot(tmp_path)
    args = (["-m", "vtc.runtime", str(copy), "--images", str(images), *extra]
            if runner == "runtime" else [str(copy / "trt" / "check.py"), "--runtime", "ort-cpu",
                                         "--seconds", "0.1", *extra])  # (later flags win)
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "Traceback" not in res.stderr and res.stdout == "", res.stderr
    assert re.search(expected, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_an_intact_bundle_passes_the_check(bundle: Path, tmp_path: Path) -> None:
    """The counterpart: the same bundle, copied whole, runs (the sha256s match)."""
    from vtc.runtime import Bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    b = Bundle.load(copy)
    assert b.run(np.zeros((3, 3, 32, 32), np.float32))["logits"].shape == (3, 10)


@pytest.mark.parametrize(("runner", "sig"), [("runtime", signal.SIGINT),
                                             ("check", signal.SIGTERM)])
def test_an_interrupted_run_exits_130_in_one_line(runner: str, sig: int, bundle: Path,
                                                  tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM while `python -m vtc.runtime` or trt/check.py works: exit 130 with
    one line, no traceback, nothing written into the bundle."""
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    images = tmp_path / "imgs"
    images.mkdir()
    if runner == "runtime":  # 100 large images: reading and resizing them takes seconds
        # (check.py times for 60 s); one file, linked under 100 names
        Image.fromarray(np.full((2000, 2500, 3), 7, np.uint8)).save(images / "0.png")
        for i in range(1, 100):
            os.link(images / "0.png", images / f"{i}.png")
    args = (["-m", "vtc.runtime", str(copy), "--images", str(images)] if runner == "runtime"
            else [str(copy / "trt" / "check.py"), "--runtime", "ort-cpu", "--seconds", "60"])
    before = _snapshot(copy)
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted: nothing was written", err
    assert _snapshot(copy) == before


def test_a_report_of_an_unknown_kind_is_refused(bundle: Path, tmp_path: Path) -> None:
    from vtc.cli import main

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    report = json.loads((copy / "report.json").read_text())
    (copy / "report.json").write_text(json.dumps({**report, "kind": "audio"}))
    for argv in (["report", "show", str(copy)], ["check", str(copy), "--baseline", str(bundle)]):
        res = CliRunner().invoke(main, argv)
        assert res.exit_code == 2, res.output
        assert "a report of kind 'audio', which this vtc does not know" in res.stderr


def test_a_bundle_given_as_source_is_named(bundle: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(export_main, [str(bundle), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert f"SOURCE {bundle}: a bundle vtc wrote (manifest.json, report.json), not a " \
        "checkpoint" in res.stderr
    assert not (tmp_path / "out").exists()
