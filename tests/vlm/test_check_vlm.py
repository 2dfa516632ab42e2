"""`vtc check` / `vtc report` on vision-language bundles: two VLM reports compared row by
row (cuts exact, generation parity, fidelity drops, prefill speedup on its bootstrap
interval), and the pairs it refuses. The baseline is the shared tiny bundle; "now" is
its report.json edited the way a regression would change it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.reports import sample_report
from vtc.cli import main
from vtc.validate.report import write_report


def _copy(bundle: Path, tmp: Path, name: str, edit: Any = None) -> Path:
    data = json.loads((bundle / "report.json").read_text())
    if edit is not None:
        edit(data)
    out = tmp / name
    out.mkdir()
    (out / "report.json").write_text(json.dumps(data))
    return out


def _check(now: Path, base: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["check", str(now), "--baseline", str(base), *extra])


def _row(json_path: Path, metric: str) -> dict[str, Any]:
    rows = json.loads(json_path.read_text())["rows"]
    return next(r for r in rows if r["metric"] == metric)


def test_a_bundle_against_itself_passes(combined_bundle: Path, tmp_path: Path) -> None:
    res = _check(combined_bundle, combined_bundle, "--json", str(tmp_path / "c.json"))
    assert res.exit_code == 0, res.output
    for metric in ("cuts.visual_tokens", "cuts.lm_layer_tokens",
                   "parity.generation.tokens_equal", "fidelity.first_logits_cosine_mean"):
        assert _row(tmp_path / "c.json", metric)["verdict"] == "pass"
    # the tiny bundle times 2 rounds: too few for a noise-aware verdict, and it says so
    speed = _row(tmp_path / "c.json", "cost.prefill_speedup")
    assert speed["verdict"] == "skip" and "generate.rounds" in speed["note"]


@pytest.mark.parametrize(("field", "value", "metric"), [
    (("cuts", "visual_tokens"), 11, "cuts.visual_tokens"),
    (("parity", "generation", "tokens_equal"), 0.5, "parity.generation.tokens_equal"),
    (("parity", "generation", "first_logits_max_abs_diff"), 0.5,
     "parity.generation.first_logits_max_abs_diff"),
    (("fidelity", "first_logits_cosine_mean"), -1.0, "fidelity.first_logits_cosine_mean"),
])
def test_a_regression_fails_its_row(combined_bundle: Path, tmp_path: Path,
                                    field: tuple[str, ...], value: float, metric: str) -> None:
    def edit(d: dict[str, Any]) -> None:
        for k in field[:-1]:
            d = d[k]
        d[field[-1]] = value

    now = _copy(combined_bundle, tmp_path, "now", edit)
    res = _check(now, combined_bundle, "--json", str(tmp_path / "c.json"))
    assert res.exit_code == 1, res.output
    assert _row(tmp_path / "c.json", metric)["verdict"] == "FAIL"


def _timed(speedup: float, seed: int, decode: float = 1.0) -> Any:
    """12 rounds of prefill latencies at `speedup` and decode rates at `decode` (cut/uncut
    tokens/s), 2 % noise."""
    rng = np.random.default_rng(seed)

    def edit(d: dict[str, Any]) -> None:
        uncut = (100 * (1 + 0.02 * rng.standard_normal(12))).tolist()
        cut = [u / speedup * (1 + 0.02 * rng.standard_normal()) for u in uncut]
        rate = (5 * (1 + 0.02 * rng.standard_normal(12))).tolist()
        d["cost"].update(rounds=12, prefill_samples_ms_uncut=uncut, prefill_samples_ms=cut,
                         prefill_ratio=1 / speedup, decode_samples_tok_s_uncut=rate,
                         decode_samples_tok_s=[r * decode * (1 + 0.02 * rng.standard_normal())
                                               for r in rate])
    return edit


def test_prefill_speedup_is_judged_on_its_interval(combined_bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = _copy(combined_bundle, tmp_path, "base", _timed(4.0, 0))
    same = _copy(combined_bundle, tmp_path, "same", _timed(4.0, 1))
    slow = _copy(combined_bundle, tmp_path, "slow", _timed(2.0, 2))
    assert _check(same, base, "--json", str(tmp_path / "s.json")).exit_code == 0
    assert _row(tmp_path / "s.json", "cost.prefill_speedup")["verdict"] == "pass"
    res = _check(slow, base, "--json", str(tmp_path / "f.json"))
    assert res.exit_code == 1, res.output
    row = _row(tmp_path / "f.json", "cost.prefill_speedup")
    assert row["verdict"] == "FAIL" and row["values"]["ratio_high"] < 0.95
    assert 0.45 < row["values"]["ratio"] < 0.55
    monkeypatch.setenv("VTC_SPEED_GATES", "advisory")
    res = _check(slow, base, "--json", str(tmp_path / "a.json"))
    assert res.exit_code == 0 and _row(tmp_path / "a.json", "cost.prefill_speedup")[
        "verdict"] == "info"


def test_decode_speedup_is_judged_on_its_interval(combined_bundle: Path,
                                                  tmp_path: Path) -> None:
    """A decoder that decodes at 0.6× the rate it had fails its row (and only that
    speed row); a report without per-round decode samples shows the rate, unjudged."""
    base = _copy(combined_bundle, tmp_path, "base", _timed(4.0, 0))
    slow = _copy(combined_bundle, tmp_path, "slow", _timed(4.0, 1, decode=0.6))
    res = _check(slow, base, "--json", str(tmp_path / "d.json"))
    assert res.exit_code == 1, res.output
    row = _row(tmp_path / "d.json", "cost.decode_speedup")
    assert row["verdict"] == "FAIL" and 0.55 < row["values"]["ratio"] < 0.65
    assert _row(tmp_path / "d.json", "cost.prefill_speedup")["verdict"] == "pass"

    def old(d: dict[str, Any]) -> None:
        _timed(4.0, 2)(d)
        for k in ("decode_samples_tok_s_uncut", "decode_samples_tok_s"):
            del d["cost"][k]
    legacy = _copy(combined_bundle, tmp_path, "legacy", old)
    assert _check(legacy, base, "--json", str(tmp_path / "o.json")).exit_code == 0
    row = _row(tmp_path / "o.json", "cost.decode_speedup")
    assert row["verdict"] == "info" and "older vtc" in row["note"]


def test_refused_pairs(combined_bundle: Path, tmp_path: Path) -> None:
    def fp16(d: dict[str, Any]) -> None:
        d["recipe"].setdefault("generate", {})["precision"] = "fp16"

    other = _copy(combined_bundle, tmp_path, "fp16", fp16)
    res = _check(other, combined_bundle)
    assert res.exit_code == 2 and "decoder precision: baseline fp32, now fp16" in res.output
    encoder = tmp_path / "encoder"
    write_report(encoder, sample_report())
    res = _check(encoder, combined_bundle)
    assert res.exit_code == 2 and "vision-language bundle and the other an encoder" in res.output
    data = json.loads((combined_bundle / "report.json").read_text())
    data.pop("cuts")
    bad = tmp_path / "broken.json"  # not report.json: the session's schema scan skips it
    bad.write_text(json.dumps(data))
    res = _check(bad, combined_bundle)
    assert res.exit_code == 2 and "not a valid vtc vision-language report" in res.output
    # report diff shows a refused pair anyway, without a verdict
    res = CliRunner().invoke(main, ["report", "diff", str(combined_bundle), str(other)])
    assert res.exit_code == 0 and "decoder precision" in res.output


def test_report_show(combined_bundle: Path) -> None:
    res = CliRunner().invoke(main, ["report", "show", str(combined_bundle), "--markdown"])
    assert res.exit_code == 0, res.output
    assert res.output == (combined_bundle / "report.md").read_text()
