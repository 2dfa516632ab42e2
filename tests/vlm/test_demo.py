"""`vtc demo --vlm`: a tiny random LLaVA exported with the shipped llava-tiny recipe, then
`vtc generate` on the bundle it wrote — the route to try the VLM side without a 7B download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from vtc.cli import main


def test_demo_vlm_then_generate(tmp_path: Path) -> None:
    out = tmp_path / "demo-vlm"
    res = CliRunner().invoke(main, ["demo", "--vlm", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"vtc generate {out}" in res.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "vlm" and report["recipe"]["name"] == "llava-tiny"
    assert report["cuts"]["visual_tokens_uncut"] == 16 and report["cuts"]["visual_tokens"] == 9
    assert report["parity"]["generation"]["tokens_equal"] == 1.0
    assert report["fidelity"]["random_weights"] is True

    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(img)
    res = CliRunner().invoke(main, ["generate", str(out), "--image", str(img), "--prompt",
                                    "What is in the picture?", "--max-new-tokens", "5",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(res.output.split()) == 5  # five greedy tokens, one word each (word tokenizer)


def test_demo_vlm_and_random_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["demo", "--vlm", "--random", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "--random and --vlm" in res.output
    assert not (tmp_path / "x").exists()
