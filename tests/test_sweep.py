"""`vtc sweep` on a tiny ViT checkpoint: the three outputs, the Pareto front, the
value / key planning, several series (--recipe repeated: one curve each), and bad
input (exit 2, one line, nothing written)."""

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
from vtc.sweep import (
    SweepError,
    pareto_front,
    parse_values,
    plan,
    plan_series,
    resolve_key,
    series_name,
)


def _sweep(*args: str) -> Result:
    return CliRunner().invoke(main, ["sweep", *args])


@pytest.fixture(scope="module")
def swept(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    out = tmp_path_factory.mktemp("sweeps") / "sweep"
    res = _sweep(str(vit_dir), "--recipe", "tome", "--values", "r=0,2,4", "--out", str(out),
                 *FAST)
    assert res.exit_code == 0, res.output
    return out, res


@pytest.fixture(scope="module")
def compared(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """ToMe vs PiToMe over the same r: two series in one sweep."""
    out = tmp_path_factory.mktemp("sweeps") / "cmp"
    res = _sweep(str(vit_dir), "--recipe", "tome", "--recipe", "pitome", "--values", "r=0,2",
                 "--out", str(out), *FAST)
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
    assert [p["run"] for p in pts] == ["runs/r=0", "runs/r=2", "runs/r=4"]  # no series level
    (series,) = data["series"]
    assert series["name"] == "tome" and series["key"] == "tome.r" and series["points"] == pts
    assert series["recipe"] == data["base_recipe"] and series["pareto"] == data["pareto"]
    assert data["machine"]["cpu_count"] and data["vtc_version"]
    assert data["command"].startswith("vtc sweep ") and "--values r=0,2,4" in data["command"]

    md = (out / "sweep.md").read_text()
    for p in pts:  # one speedup: the bundle's paired estimate and its interval
        th = json.loads((out / p["run"] / "report.json").read_text())["throughput"]
        ci = th["speedup_ci"]
        assert th["speedup"] == p["speedup"] == ci["estimate"]
        assert (p["speedup_low"], p["speedup_high"]) == (ci["low"], ci["high"])
        assert f"| {p['speedup']:.2f}× [{ci['low']:.2f}, {ci['high']:.2f}] |" in md
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


def test_plan_series() -> None:
    assert [series_name(g) for g in ("tome", "tome-r16", "cfg/my recipe.yaml", "../x.yml")] \
        == ["tome", "tome-r16", "my_recipe", "x"]
    (one,) = plan_series("tome", "r", ["0", "4"])  # one series: its points carry no series
    assert one.name == "tome" and one.key == "tome.r" and one.points[0].series is None
    assert plan_series([], "r", ["4"])[0].base.name == "tome-r8"  # none given: tome
    tome, pitome = plan_series(["tome", "pitome"], "r", ["0", "4"])
    assert (tome.key, pitome.key) == ("tome.r", "pitome.r")  # the key resolved per series
    assert [p.recipe.section("pitome").r for p in pitome.points] == [0, 4]
    assert pitome.points[1].title == "pitome r=4" and pitome.base.name == "pitome-r8"
    with pytest.raises(SweepError, match=r"^series evit: --values r: not a setting of evit"):
        plan_series(["tome", "evit"], "r", ["0"])
    with pytest.raises(SweepError, match="two series named 'tome'"):
        plan_series(["tome", "pitome", "tome"], "r", ["0"])
    with pytest.raises(SweepError, match=r"^series pitome: r=x: "):
        plan_series(["pitome", "tome"], "r", ["0", "x"])


def test_two_series_layout_json_md_png(compared: tuple[Path, Result]) -> None:
    out, res = compared
    assert {p.name for p in out.iterdir()} == {"sweep.json", "sweep.md", "sweep.png", "runs"}
    assert {p.name for p in (out / "runs").iterdir()} == {"tome", "pitome"}
    for series in ("tome", "pitome"):
        assert {p.name for p in (out / "runs" / series).iterdir()} == {"r=0", "r=2"}
    data = json.loads((out / "sweep.json").read_text())
    assert data["command"].startswith("vtc sweep ")
    assert "--recipe tome --recipe pitome --values r=0,2" in data["command"]
    assert data["base_recipe"] is None and data["key"] == "r" and data["values"] == [0, 2]
    assert data["quality"]["metric"] == "fidelity"
    tome, pitome = data["series"]
    assert (tome["name"], tome["key"], tome["recipe"]["name"], tome["recipe"]["given"]) == (
        "tome", "tome.r", "tome-r8", "tome")
    assert (pitome["name"], pitome["key"], pitome["recipe"]["name"]) == (
        "pitome", "pitome.r", "pitome-r8")
    assert pitome["recipe"]["recipe"]["method"] == ["pitome"] and pitome["run_dir"] == "runs/pitome"
    assert [(p["series"], p["label"]) for p in data["points"]] == [
        ("tome", "r=0"), ("tome", "r=2"), ("pitome", "r=0"), ("pitome", "r=2")]
    for s in data["series"]:
        pts = s["points"]
        assert [p["series"] for p in pts] == [s["name"]] * 2
        assert [p["run"] for p in pts] == [f"runs/{s['name']}/r=0", f"runs/{s['name']}/r=2"]
        assert all((out / p["run"] / "report.json").is_file() for p in pts)
        assert [p["pareto"] for p in pts] == pareto_front(pts)  # each series' own front
        assert s["pareto"] == [p["label"] for p in pts if p["pareto"]]
        assert pts[0]["quality"] == pytest.approx(1.0, abs=1e-5) and pts[0]["pareto"]
    assert data["points"] == tome["points"] + pitome["points"]
    assert data["pareto"] == [f"{s['name']}/{label}" for s in data["series"]
                              for label in s["pareto"]]
    assert pitome["points"][1]["tokens_out"] == tome["points"][1]["tokens_out"] < 17

    md = (out / "sweep.md").read_text()
    assert "| series | r | tokens out |" in md and md.count("\n| ") == 1 + 4
    rows = [ln for ln in md.splitlines() if ln.startswith("| tome |") or
            ln.startswith("| pitome |")]
    assert [r.split(" | ")[0:2] for r in rows] == [["| tome", "0"], ["| tome", "2"],
                                                   ["| pitome", "0"], ["| pitome", "2"]]
    assert "tome vs pitome" in md and "runs/<series>/<value>/" in md and data["command"] in md
    assert "| series | r |" in res.stdout and "(2 series)" in res.stdout
    assert "[1/4] tome r=0: running" in res.stderr and "[4/4] pitome r=2: tokens" in res.stderr
    raw = (out / "sweep.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 20_000


def test_one_quality_and_per_series_fronts(swept: tuple[Path, Result], vit_dir: Path,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import vtc.sweep
    from vtc.sweep import run_sweep

    template = json.loads((swept[0] / "runs" / "r=2" / "report.json").read_text())
    monkeypatch.setattr(vtc.sweep, "run", _fake_run(template))
    data = run_sweep(str(vit_dir), ["tome", "pitome"], "r", [0, 1, 2], tmp_path / "a",
                     batch=2, log=lambda _: None)
    assert data["quality"]["metric"] == "accuracy"
    tome, pitome = ([p for p in data["points"] if p["series"] == s] for s in ("tome", "pitome"))
    # pitome is slower at the same accuracy: every pitome point is dominated by its tome
    # twin, yet each series has its own front
    assert not any(pareto_front(data["points"])[3:])
    assert [p["pareto"] for p in tome] == [p["pareto"] for p in pitome] == [True] * 3
    assert data["pareto"] == ["tome/r=0", "tome/r=1", "tome/r=2",
                              "pitome/r=0", "pitome/r=1", "pitome/r=2"]
    # one series without a probe: every series falls back to the embedding cosine
    monkeypatch.setattr(vtc.sweep, "run", _fake_run(template, no_accuracy="pitome"))
    data = run_sweep(str(vit_dir), ["tome", "pitome"], "r", [0, 2], tmp_path / "b", batch=2,
                     log=lambda _: None)
    assert data["quality"]["metric"] == "fidelity"
    assert all(p["quality"] == p["fidelity_cosine"] for p in data["points"])
    assert "| series | r |" in (tmp_path / "b" / "sweep.md").read_text()


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


def test_bad_series_writes_nothing(tmp_path: Path, vit_dir: Path) -> None:
    err = _bad(tmp_path, str(vit_dir), "--recipe", "tome", "--recipe", "evit",
               "--values", "r=0,2")
    assert err.startswith("error: series evit: --values r: not a setting of evit")
    err = _bad(tmp_path, str(vit_dir), "--recipe", "tome", "--recipe", "pitome",
               "--recipe", "tome", "--values", "r=0,2")
    assert "two series named 'tome'" in err
    err = _bad(tmp_path, str(vit_dir), "--recipe", "pitome", "--recipe", "tome",
               "--values", "r=2,100")
    assert err.startswith("error: series pitome, r=100: ") and "at most" in err
    assert not (tmp_path / "out").exists()


# --- the run loop with a stand-in pipeline (fast): accuracy, aborts, interrupts -----------


def _fake_run(template: dict[str, Any], fail_at: int | None = None,
              exc: BaseException | None = None, no_accuracy: str | None = None) -> Any:
    """A stand-in for pipeline.run writing a bundle dir; accuracy falls with r, and a
    pitome point is as accurate as its tome twin but slower (no accuracy for the
    `no_accuracy` method)."""
    from vtc.pipeline import Result as PipelineResult

    calls: list[int] = []

    def run(opts: Any) -> PipelineResult:
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            assert exc is not None
            raise exc
        method = opts.recipe.method[0]
        r = opts.recipe.section(method).r
        rep = Report.from_dict(template)
        rep.budget.tokens_out = 17 - 3 * r
        assert rep.throughput is not None
        rep.throughput.speedup = 1.0 + 0.1 * r - (0.05 if method == "pitome" else 0.0)
        rep.accuracy = None if method == no_accuracy else AccuracyInfo(
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


def test_failed_point_names_its_series(swept: tuple[Path, Result], vit_dir: Path,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vtc.sweep

    template = json.loads((swept[0] / "runs" / "r=2" / "report.json").read_text())
    exc = SourceError("weights vanished")
    monkeypatch.setattr(vtc.sweep, "run", _fake_run(template, fail_at=3, exc=exc))
    res = _sweep(str(vit_dir), "-r", "tome", "-r", "pitome", "--values", "r=0,2",
                 "--out", str(tmp_path / "out"), *FAST)
    assert res.exit_code == 2, res.output
    assert res.stderr.splitlines()[-1] == "error: series pitome, r=0: weights vanished"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temp dir


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
