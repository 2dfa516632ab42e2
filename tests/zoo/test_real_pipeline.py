"""The main job on the zoo's real weights: a bare `vtc-export`, and the package's own
third-party ONNX (saliency decoder on the patch grid) compressed with unmerge."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from vtc import zoo
from vtc.cli import export_main

NAME = "dinov2-small"


def test_bare_vtc_export_runs_the_real_model(fetched: tuple[Path, list[str]],
                                             tmp_path: Path) -> None:
    home = fetched[0]
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        res = runner.invoke(export_main, ["--no-bench", "--batch", "2"],
                            env={"VTC_HOME": str(home)})
        assert res.exit_code == 0, res.output
        rep = json.loads(Path("out/dinov2-small/report.json").read_text())
    assert Path(rep["source"]["spec"]) == zoo.model_dir(NAME, home)
    assert rep["recipe"]["name"] == "dinov2-small"
    assert (rep["budget"]["tokens_in"], rep["budget"]["tokens_out"]) == (257, 65)
    assert rep["parity"]["engine"]["max_abs_diff"] <= 1e-4
    assert rep["accuracy"]["n_test"] == 100 and rep["accuracy"]["drop_points"] <= 2.0
    assert rep["fidelity"]["cosine_mean"] > 0.95  # real photos through real weights
    for row in ("tokens", "FLOPs ratio", "fidelity", "accuracy", "speedup"):
        assert row in res.output


def test_third_party_saliency_onnx_with_unmerge(fetched: tuple[Path, list[str]],
                                                tmp_path: Path) -> None:
    home = fetched[0]
    src = zoo.third_party_onnx(NAME, home=home)
    assert src.is_file() and os.path.getsize(src) > 50e6
    out = tmp_path / "focus"
    res = CliRunner().invoke(export_main, [str(src), "--recipe", "tome-r8", "--out", str(out),
                                           "--no-bench", "--batch", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["source"]["kind"] == "onnx"
    assert rep["graph"]["unmerge"]["tokens"] == 257
    assert rep["budget"]["tokens_out"] == 161
    d = rep["dense"]
    assert d["n"] == 4
    # the saliency maps keep their shape and stay close to the uncompressed model's
    assert d["pearson_mean"] >= 0.95 and d["iou_mean"] >= 0.6, d
