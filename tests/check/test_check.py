"""`vtc check` / `vtc report`: rows, verdicts, exit codes and the CI outputs, on typed
reports written to disk (tests/reports.py builds them; every tier measured)."""

from __future__ import annotations

import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.reports import MACHINE, sample_report, timing
from vtc.check import compare, read_side
from vtc.cli import main
from vtc.report import FusionInfo, Report
from vtc.validate.bench import speedup_interval
from vtc.validate.gates import evaluate_gates
from vtc.validate.report import write_report


def _slowed(report: Report, factor: float, seed: int = 7) -> Report:
    """The compressed engine `factor` times slower (fresh noise), speedup and img/s updated."""
    t = report.throughput
    assert t is not None
    comp = timing(t.compressed.p50_ms * factor, seed=seed)
    base = timing(t.baseline.p50_ms, seed=seed + 1)
    sp = base.p50_ms / comp.p50_ms
    return dataclasses.replace(report, throughput=dataclasses.replace(
        t, baseline=base, compressed=comp, speedup=sp, compressed_ips=comp.img_per_s,
        baseline_ips=base.img_per_s, speedup_ci=speedup_interval(base, comp)))


def _passing(**changes: Any) -> Report:
    """The sample report with gates that pass."""
    report = sample_report(**changes)
    report.gates = evaluate_gates(report, {"max_parity_diff": 1e-4, "min_speedup": 1.2})
    report.passed = all(g.passed for g in report.gates)
    return report


def _write(tmp: Path, name: str, report: Report) -> Path:
    write_report(tmp / name, report)
    return tmp / name


def _cmp(tmp: Path, base: Report, now: Report, **overrides: float) -> dict[str, Any]:
    c = compare(read_side(_write(tmp, "base", base), "baseline"),
                read_side(_write(tmp, "now", now), "bundle"), overrides)
    return {r.metric: r for r in c.rows} | {"passed": c.passed}


def test_same_report_passes_every_row(tmp_path: Path) -> None:
    rows = _cmp(tmp_path, _passing(), _passing())
    assert rows.pop("passed") is True
    assert {r.verdict for r in rows.values()} == {"pass"}
    assert {"budget.tokens_out", "budget.flops_ratio", "parity.engine.max_abs_diff",
            "fidelity.cosine_mean", "accuracy.compressed_acc", "dense.iou_mean",
            "throughput.speedup", "throughput.compressed_ips", "fusions.compressed"} <= set(rows)


def test_a_slowdown_beyond_noise_fails_and_a_small_one_passes(tmp_path: Path) -> None:
    slow = _cmp(tmp_path, _passing(), _slowed(_passing(), 1.25))
    assert not slow["passed"]
    assert slow["throughput.speedup"].verdict == "FAIL"
    assert slow["throughput.speedup"].values["ratio_high"] < 0.95
    assert slow["throughput.compressed_ips"].verdict == "FAIL"
    small = _cmp(tmp_path, _passing(), _slowed(_passing(), 1.02))
    assert small["throughput.speedup"].verdict == "pass" and small["passed"]
    # the same 25 % passes when the allowed drop is 30 %
    loose = _cmp(tmp_path, _passing(), _slowed(_passing(), 1.25), max_speedup_drop=0.3,
                 max_throughput_drop=0.3)
    assert loose["passed"]


def test_advisory_speed_rows_inform_and_decide_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Under VTC_SPEED_GATES=advisory the 25 % slowdown is still measured and named, as
    info; the check passes on everything else, and a bad value exits 2 in one line."""
    monkeypatch.setenv("VTC_SPEED_GATES", "advisory")
    slow = _cmp(tmp_path, _passing(), _slowed(_passing(), 1.25))
    assert slow["passed"]
    row = slow["throughput.speedup"]
    assert row.verdict == "info" and row.values["ratio_high"] < 0.95
    assert row.note.startswith("advisory (VTC_SPEED_GATES=advisory), would fail: the 95%")
    monkeypatch.setenv("VTC_SPEED_GATES", "maybe")
    res = CliRunner().invoke(main, ["check", str(tmp_path / "now"), "--baseline",
                                    str(tmp_path / "base")])
    assert res.exit_code == 2 and "VTC_SPEED_GATES='maybe'" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_too_few_rounds_skip_the_speed_rows(tmp_path: Path) -> None:
    base = _passing()
    assert base.throughput is not None
    short = dataclasses.replace(base.throughput, compressed=timing(7.0, n=4))
    rows = _cmp(tmp_path, _passing(throughput=short), base)
    assert rows["throughput.speedup"].verdict == "skip"
    assert "4 timed rounds" in rows["throughput.speedup"].note


def test_another_machine_skips_absolute_throughput_but_compares_speedup(tmp_path: Path) -> None:
    other = dataclasses.replace(MACHINE, cpu="Other CPU", onnxruntime="1.31.1")
    rows = _cmp(tmp_path, _passing(), _slowed(_passing(machine=other), 1.25))
    ips = rows["throughput.compressed_ips"]
    assert ips.verdict == "skip"
    assert "cpu: Test CPU vs Other CPU" in ips.note and "onnxruntime: 1.32.0 vs 1.31.1" in ips.note
    assert rows["throughput.speedup"].verdict == "FAIL"


def test_budget_parity_quality_fusion_and_gate_regressions(tmp_path: Path) -> None:
    base = _passing()
    assert base.fidelity is not None and base.accuracy is not None and base.parity.engine
    worse = _passing(
        budget=dataclasses.replace(base.budget, tokens_out=181, flops_ratio=1.2),
        parity=dataclasses.replace(base.parity, engine=dataclasses.replace(
            base.parity.engine, max_abs_diff=3e-4)),
        fidelity=dataclasses.replace(base.fidelity, cosine_mean=0.99),
        accuracy=dataclasses.replace(base.accuracy,
                                     compressed_acc=base.accuracy.compressed_acc - 1.0),
        fusions=FusionInfo({"Gelu": 3}, {}, {"Gelu": 3}, {}))
    rows = _cmp(tmp_path, base, worse)
    failed = {m for m, r in rows.items() if m != "passed" and r.verdict == "FAIL"}
    assert failed == {"budget.tokens_out", "budget.flops_ratio", "parity.engine.max_abs_diff",
                      "fidelity.cosine_mean", "accuracy.compressed_acc", "fusions.compressed",
                      "gate.max_parity_diff"}  # its own gate fails as well
    assert "lost Gelu x2" in rows["fusions.compressed"].change
    layers = _cmp(tmp_path, base, _passing(budget=dataclasses.replace(
        base.budget, tokens_per_layer=[197, 189, 185])))["budget.tokens_per_layer"]
    assert layers.verdict == "FAIL" and layers.change == "changed from block 2"
    # a drop inside its tolerance passes
    ok = _cmp(tmp_path, base, _passing(fidelity=dataclasses.replace(
        base.fidelity, cosine_mean=base.fidelity.cosine_mean - 0.001)))
    assert ok["fidelity.cosine_mean"].verdict == "pass"


def test_the_bundles_own_failed_gate_fails_the_check(tmp_path: Path) -> None:
    failing = sample_report()
    failing.gates = evaluate_gates(failing, {"min_speedup": 1.8})
    rows = _cmp(tmp_path, _passing(), failing)
    assert rows["gate.min_speedup"].verdict == "FAIL" and not rows["passed"]


def test_probe_on_another_split_is_skipped_with_the_reason(tmp_path: Path) -> None:
    base = _passing()
    assert base.accuracy is not None
    rows = _cmp(tmp_path, base, _passing(accuracy=dataclasses.replace(base.accuracy,
                                                                      n_test=10)))
    assert rows["accuracy.compressed_acc"].verdict == "skip"
    assert "another probe" in rows["accuracy.compressed_acc"].note


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_cli_exit_codes_table_json_and_junit(tmp_path: Path) -> None:
    base = _write(tmp_path, "base", _passing())
    slow = _write(tmp_path, "slow", _slowed(_passing(), 1.3))
    res = _run("check", str(base), "--baseline", str(base / "report.json"))
    assert res.exit_code == 0, res.output
    assert "vtc check: PASS" in res.output and "verdict" in res.output.splitlines()[0]
    out_json, out_xml = tmp_path / "cmp.json", tmp_path / "cmp.xml"
    res = _run("check", str(slow), "--baseline", str(base), "--json", str(out_json),
               "--junit", str(out_xml))
    assert res.exit_code == 1, res.output
    assert "FAIL, 2 regression(s)" in res.output and "throughput.speedup" in res.output
    data = json.loads(out_json.read_text())
    assert data["passed"] is False and data["tolerances"]["max_speedup_drop"] == 0.05
    suite = ET.parse(out_xml).getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) == len(data["rows"]) == int(suite.get("tests", "0"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["throughput.speedup", "throughput.compressed_ips"]
    assert suite.get("failures") == "2"


def test_report_diff_and_show(tmp_path: Path) -> None:
    base = _write(tmp_path, "base", _passing())
    slow = _write(tmp_path, "slow", _slowed(_passing(), 1.3))
    res = _run("report", "diff", str(base), str(slow / "report.json"))
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0].split()
    assert header == ["metric", "baseline", "now", "change"]
    assert "throughput.speedup" in res.output and "FAIL" not in res.output
    res = _run("report", "show", str(base), "--markdown")
    assert res.exit_code == 0 and res.output == (base / "report.md").read_text()
    res = _run("report", "show", str(base / "report.md"), "--markdown")
    assert res.exit_code == 0 and res.output == (base / "report.md").read_text()
    res = _run("report", "show", str(base / "report.json"))
    assert res.exit_code == 0 and res.output.startswith("VTC REPORT: PASS\n\nPASS — gates:")
    assert "|" not in res.output and "**" not in res.output and "`" not in res.output
    assert "\033[" not in res.output  # not a terminal: no colour


def _schema(tmp: Path, version: int) -> Path:
    path = _write(tmp, "v", _passing()) / "report.json"
    data = json.loads(path.read_text())
    data["schema_version"] = version
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda t: t / "missing", [], r"baseline .*missing: no such file or directory"),
    (lambda t: (t / "bad.json").write_text("{not json") and t / "bad.json", [],
     r"bad.json: not valid JSON \(line 1"),
    (lambda t: (t / "x.json").write_text("[1, 2]") and t / "x.json", [], r"not a vtc report"),
    (lambda t: _schema(t, 1), [], r"report schema version 1, this vtc reads versions 2, 3"),
    (lambda t: _write(t, "o", _passing(budget=dataclasses.replace(
        _passing().budget, tokens_in=257))), [], r"another|tokens in: baseline 257, now 197"),
    (lambda t: _write(t, "p", _passing(engine=dataclasses.replace(
        _passing().engine, precision="fp32"))), [], r"precision: baseline fp32, now fp16"),
    (lambda t: _write(t, "g", _passing(engine=dataclasses.replace(
        _passing().engine, cuda_graph=False))), [], r"CUDA graph: baseline False, now True"),
    (lambda t: _write(t, "b", _slowed(_passing(), 1.0)), ["-t", "max_speedup_drop=1.5"],
     r"max_speedup_drop=1.5: Input should be less than 1"),
    (lambda t: _write(t, "c", _passing()), ["-t", "speed=0.1"], r"--tolerance 'speed=0.1'"),
    (lambda t: _write(t, "d", _passing()), ["--json", "NOW/report.json"],
     r"one of the reports being compared"),
])
def test_bad_baselines_exit_2_and_write_nothing(tmp_path: Path, make: Any, extra: list[str],
                                                message: str) -> None:
    now = _write(tmp_path, "now", _passing())
    baseline = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [a.replace("NOW", str(now)) for a in extra]
    res = _run("check", str(now), "--baseline", str(baseline), *args)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.output
    assert re.search(message, errors[0]), errors[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def _dangling(t: Path) -> Path:
    (t / "link.xml").symlink_to(t / "nowhere" / "x.xml")
    return t / "link.xml"


def _readonly(t: Path) -> Path:
    d = t / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d / "x.xml"


@pytest.mark.parametrize("flag", ["--junit", "--json"])
@pytest.mark.parametrize(("make", "message"), [
    (lambda t: Path("/proc/x.xml"), r"/proc/x.xml: cannot write in /proc"),
    (lambda t: t, r"is a directory"),
    (_dangling, r"a symbolic link to .*nowhere/x.xml, which does not exist"),
    (lambda t: t / "missing" / "x.xml", r"directory .*missing does not exist"),
    (lambda t: Path("/dev/null"), r"not a regular file"),
])
def test_output_paths_are_checked_before_any_work(tmp_path: Path, flag: str, make: Any,
                                                  message: str) -> None:
    """An output that cannot be written: one line, exit 2, nothing printed before it (the
    issue's `--junit /proc/x.xml` printed the whole table, then exit 3)."""
    now = _write(tmp_path, "now", _passing())
    res = _run("check", str(now), "--baseline", str(now), flag, str(make(tmp_path)))
    assert res.exit_code == 2, res.output
    lines = res.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), res.output
    assert re.search(message, lines[0]), lines[0]


def test_an_unwritable_directory_is_refused(tmp_path: Path) -> None:
    import os

    target = _readonly(tmp_path)
    if os.geteuid() == 0:  # root writes anywhere but /proc-like file systems
        target.parent.chmod(0o700)
        pytest.skip("running as root: a mode-0500 directory is writable")
    now = _write(tmp_path, "now", _passing())
    res = _run("check", str(now), "--baseline", str(now), "--junit", str(target))
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "cannot write in" in res.output


def test_json_and_junit_may_not_be_one_file(tmp_path: Path) -> None:
    now = _write(tmp_path, "now", _passing())
    out = tmp_path / "x.out"
    res = _run("check", str(now), "--baseline", str(now), "--json", str(out), "--junit",
               str(out))
    assert res.exit_code == 2 and "the same file" in res.output and not out.exists()


def test_report_diff_compares_any_two_reports(tmp_path: Path) -> None:
    """Another model, method and batch: `vtc check` refuses the pair, `vtc report diff`
    prints the table, no verdict, says what differs, exit 0."""
    a = _passing()
    other = _slowed(_passing(), 1.2)
    assert other.throughput is not None
    b = dataclasses.replace(
        other, source=dataclasses.replace(a.source, model_type="dinov2"),
        budget=dataclasses.replace(a.budget, tokens_in=257, methods=["evit"]),
        throughput=dataclasses.replace(other.throughput, batch=4))
    pa, pb = _write(tmp_path, "a", a), _write(tmp_path, "b", b)
    assert _run("check", str(pb), "--baseline", str(pa)).exit_code == 2
    res = _run("report", "diff", str(pa), str(pb))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["metric", "baseline", "now", "change"]
    assert "FAIL" not in res.output and "pass" not in res.output.split()
    assert any(ln.startswith("throughput.speedup") for ln in lines)
    assert lines[-1].startswith("not comparable as a check") or \
        "not comparable as a check" in res.output
    assert "model type: baseline vit, now dinov2" in res.output
    assert "timed batch: baseline 8, now 4" in res.output


def test_a_schema_2_baseline_is_read_as_schema_3(tmp_path: Path) -> None:
    """Version 3 made throughput.speedup the paired estimate; a stored version-2 report
    still compares, its median-latency speedup moved to speedup_median."""
    path = _write(tmp_path, "v2", _passing()) / "report.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    th = data["throughput"]
    del th["speedup_median"]
    th["speedup"] = 1.4286  # v2: the median ratio
    path.write_text(json.dumps(data))
    side = read_side(path, "baseline")
    t = side.report.throughput
    assert t is not None and t.speedup == t.speedup_ci.estimate == 1.43
    assert t.speedup_median == 1.4286
    now = _write(tmp_path, "now", _passing())
    assert _run("check", str(now), "--baseline", str(path)).exit_code == 0
