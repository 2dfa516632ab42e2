"""The peer table (bench/peers.py) in its quick mode: tiny random ViT and DINOv2, every
row built by vtc's stages and timed interleaved. Its structure, and that every ratio
and img/s comes from the measured samples; no speed is asserted (timed unit tests are
not how speed is judged here). The target logic is checked on made-up samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.peer_rows import REFERENCE, ROWS
from bench.peers import QUICK, markdown, run_peers, table, targets
from vtc import stats
from vtc.report import TimingInfo


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("peers")
    res = run_peers(QUICK, tmp / "work", 3, 1, False, tmp / "out", threads=1,
                    log=lambda _m: None)
    return res, tmp / "out"


def test_written_files_hold_the_result(quick: tuple[dict[str, Any], Path]) -> None:
    res, out = quick
    assert json.loads((out / "peers.json").read_text()) == json.loads(json.dumps(res))
    md = (out / "peers.md").read_text()
    for m in res["models"]:
        assert f"### {m['model']}" in md
        assert all(f"| {label} |" in md for label, *_ in ROWS.values())
    assert not list(out.glob(".*.tmp"))  # written through temp files, renamed


def test_rows_and_ratios_come_from_the_samples(quick: tuple[dict[str, Any], Path]) -> None:
    res, _ = quick
    assert res["quick"] and len(res["models"]) == 2
    for m in res["models"]:
        rows = {r["key"]: r for r in m["rows"]}
        assert list(rows) == list(ROWS) and m["batch"] == 8 and m["rounds"] == 3
        samples = {k: r["samples_ms"] for k, r in rows.items()}
        assert all(len(s) == 3 for s in samples.values())
        for k, r in rows.items():
            assert r["img_per_s"] == pytest.approx(8 / (np.median(samples[k]) / 1e3))
            assert r["compressed"] == ROWS[k][1]
        fastest = m["fastest_uncompressed"]
        assert fastest == max((k for k in rows if not ROWS[k][1]),
                              key=lambda k: rows[k]["img_per_s"])
        for k, r in rows.items():
            want = stats.paired_speedup(samples[fastest], samples[k])
            assert r["ratio"] == pytest.approx(want)
            assert r["ratio_low"] <= r["ratio"] <= r["ratio_high"]
        assert rows[fastest]["ratio"] == pytest.approx(1.0)
        assert m["tokens_out"] < m["tokens_in"] and m["tome_r"] == 16
        assert m["attention"] == "sdpa" and m["threads"] == 1


def test_rows_compute_the_same_models(quick: tuple[dict[str, Any], Path]) -> None:
    """The uncompressed fp32 peers are one model; the eager ToMe patch and vtc's ORT
    engine are one algorithm at one r (both checked on the timing batch)."""
    res, _ = quick
    for m in res["models"]:
        cos = {r["key"]: r["output_cosine"] for r in m["rows"]}
        assert cos[REFERENCE] == pytest.approx(1.0)
        assert cos["openvino"] > 0.9999 and cos["eager-sdpa"] > 0.9999
        assert cos["vtc-ort-fp32"] < 0.9999  # the merges changed the output
        assert m["eager_tome_vs_vtc_ort_fp32_max_abs"] <= 1e-4


def test_probe_column(quick: tuple[dict[str, Any], Path]) -> None:
    vit, dino = quick[0]["models"]
    assert vit["probe"] is None and "random weights" in vit["probe_na"]
    assert all(r["probe_acc"] is None for r in vit["rows"])
    assert "| n/a |" in markdown(vit)
    p = dino["probe"]
    assert (p["dataset"], p["n_train"], p["n_test"]) == ("lfw-subset", 40, 40)
    rows = {r["key"]: r for r in dino["rows"]}
    assert rows[REFERENCE]["probe_acc"] == pytest.approx(p["baseline_acc"])
    assert rows[REFERENCE]["probe_drop"] == 0.0
    for r in rows.values():
        assert 0.0 <= r["probe_acc"] <= 100.0
        assert r["probe_drop"] == pytest.approx(p["baseline_acc"] - r["probe_acc"])


def test_quick_mode_judges_nothing(quick: tuple[dict[str, Any], Path]) -> None:
    lines = quick[0]["targets"]
    assert lines and all(t["ok"] is None for t in lines)
    texts = " ".join(t["text"] for t in lines)
    assert "[target ≥ 1.8×]" in texts and "[target ≥ 1.3×]" in texts
    assert "[target ≤ 1.0 pt]" in texts


def _timings(ms: dict[str, float], rounds: int = 12) -> dict[str, TimingInfo]:
    """Made-up per-round latencies around `ms[key]` (±2 %, seeded)."""
    rng = np.random.default_rng(0)
    out = {}
    for k, v in ms.items():
        s = list(v * (1 + 0.02 * rng.standard_normal(rounds)))
        out[k] = TimingInfo(p50_ms=float(np.median(s)), p95_ms=max(s), mean_ms=float(np.mean(s)),
                            img_per_s=8e3 / float(np.median(s)), n=rounds, batch=8,
                            samples_ms=s)
    return out


@pytest.mark.parametrize(("vtc_int8_ms", "passes"), [(40.0, [True, True]),
                                                     (60.0, [False, False])])
def test_targets_against_their_limits(vtc_int8_ms: float, passes: list[bool]) -> None:
    ms = {"ort-fp32": 300.0, "ort-int8": 110.0, "ort-int8-all": 100.0, "ort-int8-dyn": 105.0,
          "openvino": 280.0, "eager-sdpa": 400.0, "eager-tome": 250.0, "vtc-ort-fp32": 70.0,
          "vtc-ort-int8": vtc_int8_ms, "vtc-ort-int8-all": vtc_int8_ms + 5,
          "vtc-ort-int8-dyn": vtc_int8_ms + 3, "vtc-openvino": 75.0}
    fastest, rows = table(_timings(ms))
    assert fastest == "ort-int8-all"  # the fastest uncompressed peer, int8 included
    res = {"model": "m", "recipe": "tome-r16", "fastest_uncompressed": fastest, "rows": rows,
           "speed_targets": True, "probe_target": False, "probe": None, "tome_r": 16,
           "eager_tome_vs_vtc_ort_fp32_max_abs": 0.0}
    judged = [ok for ok, _ in targets(res, judge=True)]
    # 100/40 = 2.5x ≥ 1.8 and 70/40 = 1.75x ≥ 1.3; with 60 ms: the fastest vtc row is
    # vtc + ORT fp32 at 100/70 = 1.43x < 1.8 and int8 is slower than fp32
    assert judged == [*passes, None, None]


@pytest.mark.parametrize(("drop", "ok"), [(0.5, True), (1.0, True), (1.5, False)])
def test_probe_target_against_its_limit(drop: float, ok: bool) -> None:
    fastest, rows = table(_timings(dict.fromkeys(ROWS, 100.0)))
    probe = {"dataset": "fashion-mnist", "n_train": 2000, "n_test": 2000, "baseline_acc": 80.0,
             "rows": {k: {"acc": 80.0 - drop, "drop": drop} for k in ROWS}}
    res = {"model": "m", "recipe": "dinov2-small", "fastest_uncompressed": fastest,
           "rows": rows, "speed_targets": False, "probe_target": True, "probe": probe,
           "tome_r": 16, "eager_tome_vs_vtc_ort_fp32_max_abs": 0.0}
    lines = targets(res, judge=True)
    assert [o for o, _ in lines] == [ok, None, None]
    assert f"every weight MatMul int8: probe drop {drop:.2f} pt" in lines[1][1]
