"""`vtc sweep` on a tiny ViT checkpoint: the three outputs, the Pareto front, the
value / key planning, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.conftest import FAST
from vtc.cli import main
from vtc.report import AccuracyInfo, DatasetInfo, DenseInfo, Report
from vtc.source import SourceError
from vtc.sweep import SweepError, pareto_front, parse_values, plan, resolve_key


def _sweep(*args: str) -> Result:
    return CliRunner().invoke(main, ["sweep", *args])


@pytest.fixture(scope="module")
def swept(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("sweeps") / "sweep"
    res = _sweep(str(vit_dir), "--recipe", "tome", "--values", "r=0,2,4", "--out", str(out),
                 *FAST)
    assert res.exit_code == 0, res.output
    return out, res


def test_sweep_writes_json_md_png_and_runs(swept: tuple[Path, Result]) -> None:
    out, res = swept
    assert {p.name for p in out.iterdir()} == {"sweep.json", "sweep.md", "sweep.png", "runs"}
    assert not list(out.parent.glob(".sweep.*"))  # no temp dir left beside OUT
    data = json.loads((out / "sweep.json").read_text())
    assert data["key"] == "tome.r" and data["values"] == [0, 2, 4]
    assert data["base_recipe"]["name"] == "tome-r8"
    pts = data["points"]
    assert [p["label"] for p in pts] == ["r=0", "r=2", "r=4"]
    tokens = [p["tokens_out"] for p in pts]
    assert tokens[0] == 17 and all(a >= b for a, b in itertools.pairwise(tokens))
    assert tokens[-1] < tokens[0]
    assert pts[0]["flops_ratio"] == 1.0 and pts[-1]["flops_ratio"] > 1.0
    assert data["quality"] == {"metric": "fidelity", "label": "fidelity: embedding cosine"}
    for p in pts:
        assert p["speedup"] > 0 and p["baseline_ips"] > 0 and p["compressed_ips"] > 0
        assert p["quality"] == p["fidelity_cosine"] and 0 < p["quality"] <= 1 + 1e-6
        assert isinstance(p["pareto"], bool)
        assert (out / p["run"] / "report.json").is_file()
    assert pts[0]["quality"] == pytest.approx(1.0, abs=1e-5)  # r=0 is the uncompressed point
    assert data["pareto"] == [p["label"] for p in pts if p["pareto"]] and data["pareto"]
    assert data["machine"]["cpu_count"] and data["vtc_version"]
    assert data["command"].startswith("vtc sweep ") and "--values r=0,2,4" in data["command"]

    md = (out / "sweep.md").read_text()
    assert md.count("\n| ") == 1 + 3  # header + one row per point (after the | --- | line)
    assert "sweep.png" in md and data["command"] in md
    assert res.stdout.count("\n| ") >= 3  # the table on stdout, progress on stderr
    assert "[1/3] r=0: tokens 17 → 17" in res.stderr and "[3/3] r=4:" in res.stderr
    assert "    [1/7] loading" in res.stderr  # the pipeline's own lines, indented


def test_png_is_a_real_png(swept: tuple[Path, Result]) -> None:
    raw = (swept[0] / "sweep.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    width, height = struct.unpack(">II", raw[16:24])
    assert width > 600 and height > 300 and len(raw) > 20_000


def _pt(speedup: float | None, quality: float | None) -> dict[str, Any]:
    return {"speedup": speedup, "quality": quality}


def test_pareto_front() -> None:
    points = [
        _pt(1.0, 1.00),   # best quality
        _pt(1.5, 0.90),   # on the front
        _pt(1.4, 0.85),   # dominated by the one above (slower and worse)
        _pt(1.5, 0.90),   # an exact tie: ties do not dominate each other
        _pt(2.0, 0.50),   # fastest
        _pt(1.5, 0.80),   # same speed as a front point, lower quality: dominated
        _pt(1.0, 0.95),   # same speed as the best-quality point, lower quality: dominated
        _pt(None, 1.0),   # not measured: never on the front, dominates nothing
    ]
    assert pareto_front(points) == [True, True, False, True, True, False, False, False]
    assert pareto_front([]) == []
    assert pareto_front([_pt(0.9, 0.99)]) == [True]


def test_parse_and_plan() -> None:
    assert parse_values("r=0, 4,8") == ("r", ["0", "4", "8"])
    assert parse_values("tome.r=[1,2,3],[4,4,4]") == ("tome.r", ["[1,2,3]", "[4,4,4]"])
    assert resolve_key("keep_rate", ["evit"]) == "evit.keep_rate"
    assert resolve_key("flops_ratio", ["tome"]) == "tome.flops_ratio"
    assert resolve_key("validate.seed", ["tome"]) == "validate.seed"
    assert resolve_key("margin", ["tome", "pitome"]) == "pitome.margin"
    with pytest.raises(SweepError, match="tome and pitome both have 'r'"):
        resolve_key("r", ["tome", "pitome"])
    _, key, pts = plan("tome", "flops_ratio", ["1.0", "1.5"])  # tome-r8 sets r: it is cleared
    assert key == "tome.flops_ratio" and [p.recipe.section("tome").r for p in pts] == [None] * 2
    assert [p.recipe.section("tome").flops_ratio for p in pts] == [1.0, 1.5]
    _, key, pts = plan("pitome", "r", ["4", "8"])  # a bare method name starts from its recipe
    assert key == "pitome.r" and pts[0].recipe.name == "pitome-r8"
    _, key, pts = plan("evit", "keep_rate", [1.0, 0.5])  # Python values work too
    assert key == "evit.keep_rate" and [p.label for p in pts] == ["keep_rate=1.0",
                                                                  "keep_rate=0.5"]
    assert pts[1].recipe.name == "evit-keep70" and pts[1].recipe.section("evit").keep_rate == 0.5
    for bad in ("r", "r=", "=1,2", "r=1,,2"):
        with pytest.raises(SweepError):
            parse_values(bad)
    with pytest.raises(SweepError, match="evit setting"):
        plan("tome", "keep_rate", ["0.5"])
    with pytest.raises(SweepError, match="given twice"):
        plan("tome", "r", ["4", "4"])
    with pytest.raises(SweepError, match="r=x"):
        plan("tome", "r", ["0", "x"])
    with pytest.raises(SweepError, match="no effect"):
        plan("evit", "tome.r", ["4"])


# --- bad input: exit 2, one line, nothing written ----------------------------------------


def _bad(tmp_path: Path, *args: str, out: Path | None = None) -> str:
    out = out or tmp_path / "out"
    res = _sweep(*args, "--out", str(out), *FAST)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == [lines[-1]]
    assert not list(tmp_path.glob(".out.*"))
    return lines[-1]


def test_bad_key_writes_nothing(tmp_path: Path, vit_dir: Path) -> None:
    err = _bad(tmp_path, str(vit_dir), "--recipe", "tome", "--values", "rr=2,4")
    assert "rr" in err and "r, flops_ratio" in err
    err = _bad(tmp_path, str(vit_dir), "--values", "tome.nope=2,4")
    assert "tome.nope=2" in err and "unknown key" in err
    assert not (tmp_path / "out").exists()


def test_impossible_value_is_named_before_anything_runs(tmp_path: Path, vit_dir: Path) -> None:
    err = _bad(tmp_path, str(vit_dir), "--recipe", "tome", "--values", "r=2,100")
    assert err.startswith("error: r=100: ") and "at most" in err
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_force(tmp_path: Path, vit_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _bad(tmp_path, str(vit_dir), "--values", "r=0,2", out=out)
    assert "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# --- the run loop with a stand-in pipeline (fast): accuracy, aborts, interrupts -----------


def _fake_run(template: dict[str, Any], fail_at: int | None = None,
              exc: BaseException | None = None) -> Any:
    """A stand-in for pipeline.run writing a bundle dir; accuracy falls with r."""
    from vtc.pipeline import Result as PipelineResult

    calls: list[int] = []

    def run(opts: Any) -> PipelineResult:
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            assert exc is not None
            raise exc
        r = opts.recipe.section("tome").r
        rep = Report.from_dict(template)
        rep.budget.tokens_out = 17 - 3 * r
        assert rep.throughput is not None
        rep.throughput.speedup = 1.0 + 0.1 * r
        rep.accuracy = AccuracyInfo(
            DatasetInfo("lfw_subset", "skimage", 100, 100, 2, ["a", "b"], [25, 25], 0, "all"),
            n_train=100, n_test=100, n_classes=2, baseline_acc=80.0,
            compressed_acc=80.0 - r * r, drop_points=float(r * r), embedding_cosine_mean=0.99,
            embedding_cosine_min=0.9, classifier="logistic regression")
        rep.dense = DenseInfo("map", 1, 0.9, 0.9, 0.5, 0.5, 0.8, [0.9], [0.5])
        opts.out.mkdir(parents=True)
        (opts.out / "report.json").write_text(json.dumps(rep.to_dict()))
        return PipelineResult(opts.out, rep)

    return run


def test_accuracy_is_the_quality_when_reported(swept: tuple[Path, Result], vit_dir: Path,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import vtc.sweep
    from vtc.sweep import run_sweep

    template = json.loads((swept[0] / "runs" / "r=2" / "report.json").read_text())
    monkeypatch.setattr(vtc.sweep, "run", _fake_run(template))
    lines: list[str] = []
    data = run_sweep(str(vit_dir), "tome", "r", [0, 1, 2], tmp_path / "out", batch=2,
                     log=lines.append)
    assert data["quality"]["metric"] == "accuracy"
    assert data["dataset"] == "lfw_subset, linear probe, 100 test images"
    assert [p["quality"] for p in data["points"]] == pytest.approx([80.0, 79.0, 76.0])
    assert [p["accuracy"]["drop_points"] for p in data["points"]] == pytest.approx([0, 1, 4])
    assert [p["pareto"] for p in data["points"]] == [True, True, True]
    assert data["points"][0]["dense_pearson_mean"] == 0.9
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "top-1 acc (%)" in md and "dense pearson" in md and "| 1 | 14 |" in md
    assert any("accuracy 76.00 % (drop 4.00 pts)" in ln for ln in lines)
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == json.loads(
        json.dumps(data))


@pytest.mark.parametrize("exc, code, text", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (SourceError("weights vanished"), 2, "error: r=2: weights vanished"),
    (RuntimeError("a bug"), 3, "internal error: RuntimeError: a bug"),
])
def test_failed_point_leaves_nothing(swept: tuple[Path, Result], vit_dir: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, exc: BaseException,
                                     code: int, text: str) -> None:
    import vtc.sweep

    monkeypatch.setenv("VTC_CRASH_DIR", str(tmp_path / "crash"))
    (tmp_path / "crash").mkdir()
    template = json.loads((swept[0] / "runs" / "r=2" / "report.json").read_text())
    monkeypatch.setattr(vtc.sweep, "run", _fake_run(template, fail_at=2, exc=exc))
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old sweep")
    res = _sweep(str(vit_dir), "--values", "r=0,2,3", "--out", str(out), "--force", *FAST)
    assert res.exit_code == code, res.output
    assert res.stderr.splitlines()[-1].startswith(text)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old OUT is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash", "out"]  # no temp dir
    if code == 3:  # the traceback went to the crash log the message names
        (log,) = (tmp_path / "crash").iterdir()
        assert str(log) in res.stderr and "RuntimeError: a bug" in log.read_text()
