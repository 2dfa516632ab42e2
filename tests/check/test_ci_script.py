"""The CI pieces end to end on a tiny model: docs/ci/vtc-check.sh (first run stores
the baseline, the second compares and passes), the workflow file parses, and two
builds of the same source and recipe are byte-identical and pass `vtc check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main, main

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "docs" / "ci" / "vtc-check.sh"


def _script(*args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    bindir = str(Path(sys.executable).parent)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                               **(env or {})})


def test_ci_script_stores_then_checks(vit_dir: Path, tmp_path: Path) -> None:
    common = [str(vit_dir), "tome-r8", "baselines/vit", "out/vit", *FAST,
              "--set", "tome.r=4", "--set", "validate.repeats=6"]
    first = _script(*common, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "stored out/vit as the baseline" in first.stdout
    stored = sorted(p.name for p in (tmp_path / "baselines" / "vit").iterdir())
    assert stored == ["manifest.json", "report.json", "report.md"]

    second = _script(*common, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "vtc check: PASS" in second.stdout
    xml = (tmp_path / "out" / "vit.junit.xml").read_text()
    assert "<testcase" in xml and "<failure" not in xml
    assert json.loads((tmp_path / "out" / "vit.check.json").read_text())["passed"] is True
    assert (tmp_path / "out" / "vit" / "model.onnx").is_file()


def test_ci_script_usage_is_exit_2(tmp_path: Path) -> None:
    res = _script("only-one-arg", cwd=tmp_path)
    assert res.returncode == 2 and "usage:" in res.stderr


def test_workflow_is_valid_yaml_that_runs_the_script() -> None:
    wf = yaml.safe_load((ROOT / "docs" / "ci" / "github-actions.yml").read_text())
    steps = wf["jobs"]["vtc-check"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    uses = [s.get("uses", "") for s in steps]
    assert "docs/ci/vtc-check.sh" in runs
    assert any(u.startswith("actions/cache/restore") for u in uses)
    assert any(u.startswith("actions/upload-artifact") for u in uses)


def test_two_builds_are_byte_identical(vit_dir: Path, tmp_path: Path) -> None:
    """Same source, recipe and vtc: the graphs and the manifest (which lists their
    sha256) are the same bytes, so a baseline means something."""
    outs = []
    for i in (1, 2):
        out = tmp_path / f"b{i}"
        res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                               str(out), *FAST])
        assert res.exit_code == 0, res.output
        outs.append(out)
    for name in ("baseline.onnx", "model.onnx", "model.ort.onnx", "manifest.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    files = json.loads((outs[0] / "manifest.json").read_text())["files"]
    assert set(files) >= {"baseline.onnx", "model.onnx"}
    res = CliRunner().invoke(main, ["check", str(outs[1]), "--baseline", str(outs[0])])
    assert res.exit_code == 0, res.output
    # a budget change against the same baseline is a regression (exit 1)
    out = tmp_path / "r2"
    res = CliRunner().invoke(export_main, [str(vit_dir), "--recipe", "tome-r8", "--out",
                                           str(out), *FAST, "--set", "tome.r=2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["check", str(out), "--baseline", str(outs[0])])
    assert res.exit_code == 1 and "budget.tokens_out" in res.output.splitlines()[-1]
