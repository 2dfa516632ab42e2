"""report.json and report.md from the typed report: every field has its place on the
page, the JSON re-reads into the same report, and the shipped JSON Schema is the type's."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jsonschema
import pytest

from tests.reports import sample_report
from vtc.report import SCHEMA_VERSION, Gate, Report, json_schema
from vtc.validate.gates import evaluate_gates
from vtc.validate.report import SECTIONS, SUMMARY, render_markdown, write_report

SCHEMA_FILE = Path(__file__).parents[2] / "vtc" / "report.schema.json"


def _gated() -> Report:
    report = sample_report()
    report.gates = evaluate_gates(report, {"min_speedup": 1.8, "max_parity_diff": 1e-4,
                                           "max_accuracy_drop": 1.0})
    report.passed = all(g.passed for g in report.gates)
    report.gates_skipped = ["min_dense_iou"]
    return report


def test_write_report_json_and_md(tmp_path: Path) -> None:
    json_path, md_path = write_report(tmp_path / "out", _gated())
    assert json_path == tmp_path / "out" / "report.json"
    data = json.loads(json_path.read_text())
    assert data["budget"]["flops_ratio"] == 1.31 and data["schema_version"] == SCHEMA_VERSION
    assert data["throughput"]["baseline"]["p50_ms"] == 10.0
    assert len(data["throughput"]["baseline"]["samples_ms"]) == 20
    assert data["parity"]["export"]["shape"] == [2, 3]
    assert data["gates"][0]["name"] == "min_speedup" and data["gates"][0]["passed"] is False
    assert data["budget"]["layers"][1]["params"] == {"r": 8, "first": 1, "protected": "inside"}
    # the file re-reads into the same report the gates read
    back = Report.from_dict(data)
    assert back == _gated()
    assert not evaluate_gates(back, {"min_speedup": 1.8})[0].passed
    # files get the usual mode, not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    assert json_path.stat().st_mode & 0o777 == md_path.stat().st_mode & 0o777 == 0o666 & ~mask

    md = md_path.read_text()
    for key, (title, _render) in SECTIONS.items():  # a null optional tier has no section
        assert (f"## {title}\n" in md) is (getattr(_gated(), key) is not None), title
    assert "| 0 | 197 | 189 | tome | first=1, protected=inside, r=8 |  | gather |" in md
    assert "| 2 | 181 | 173 | tome | first=1, protected=inside, r=8 | yes | compact |" in md
    # each site's formulation, nodes and the cost figures behind the choice
    assert "the cost model's µs per batch of 8 on `ort` prices" in md
    assert "| block | method | formulation | chosen by | nodes | µs compact | µs gather |" in md
    assert "| 2 | tome | **compact** | cost | 22 | 300 | 398 | 19 | 36 | 9000000 | 30000 |" in md
    assert data["graph"]["reductions"][2]["formulation"] == "compact"
    assert "| baseline | 8 | 800 | 10 | " in md
    assert "- speedup: **1.43× [1.38, 1.47]** — paired speedup, 95% bootstrap interval over " \
        "20 interleaved rounds" in md
    assert "- Test CPU, 2 cores, Linux x86_64; Python 3.12.0, onnxruntime 1.32.0" in md
    assert "- deployed: ort (fp16), `model.ort.onnx`; providers: CUDAExecutionProvider, " \
        "CPUExecutionProvider; provider options: CUDAExecutionProvider: enable_cuda_graph=1" in md
    assert "- CUDA graph: yes; timing with I/O binding: yes" in md
    assert "reference engines: fp32, provider options: CUDAExecutionProvider: use_tf32=0" in md
    assert "- cosine: mean 0.999500, min 0.998000" in md
    assert "lost fusions: Gelu x1" in md
    assert md.startswith("# vtc report: FAIL\n\n**FAIL** — gates: 2 failed (min_speedup, "
                         "max_accuracy_drop), 1 passed, 1 skipped.")
    assert "FAIL min_speedup: 1.47 < 1.80 (upper end of the paired 95% interval" in md
    assert "ok   max_parity_diff: 2e-06 <= 1e-04" in md
    assert "| engine | 2.00e-06 |" in md
    assert "- n 64, cosine_mean 0.998000, cosine_min 0.990000" in md
    acc = data["accuracy"]
    assert acc["drop_points"] > 5  # compressed features are the test rows reversed
    assert "- dataset: **lfw-subset** (skimage.data.lfw_subset()), seed 0" in md
    assert "- split: train 40 / test 20 images, 2 classes" in md
    assert f"| compressed | {acc['compressed_acc']:.4g} |" in md
    assert "FAIL max_accuracy_drop:" in md
    assert "output: **depth**, 2 images" in md
    assert "| IoU above the baseline's q0.8 value | 1 | 1 |" in md
    assert "unmerge after block 2 back to 197 tokens, before node_view_16" in md
    assert ("token-sequence output(s) tokens: tokens_out **merged**, 173 tokens; each "
            "token's size in output `token_sizes`") in md
    assert ", basis sample" in md
    assert "- `min_dense_iou`: not measurable in this run" in md
    # results first, the recipe last
    order = ["## Results", "## Gates", "## Token budget", "## Parity", "## Fidelity",
             "## Accuracy", "## Throughput", "## Engine", "## Source", "## Recipe"]
    assert [md.index(t) for t in order] == sorted(md.index(t) for t in order)
    assert "| speed | **1.43× [1.38, 1.47]** (paired, 95% interval, 20 rounds, batch 8)" in md
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_every_report_field_is_rendered() -> None:
    """SECTIONS (titled sections) and SUMMARY (the header: verdict, payoff, skipped gate
    names) cover the dataclass exactly."""
    fields = {f.name for f in dataclasses.fields(Report)}
    assert set(SECTIONS) | set(SUMMARY) == fields and not set(SECTIONS) & set(SUMMARY)


def test_null_tiers_say_not_measured() -> None:
    """The results table says so; a null tier has no section at all."""
    md = render_markdown(sample_report(accuracy=None, dense=None, throughput=None,
                                       fusions=None))
    assert "| accuracy | not measured (no validate.dataset) |" in md
    assert "| speed | not measured (--no-bench) |" in md
    for title in ("Accuracy (linear probe)", "Throughput", "Dense output fidelity",
                  "ORT fusions"):
        assert f"## {title}" not in md


def test_recipe_last_with_only_the_methods_used() -> None:
    from vtc.recipe import load_recipe

    recipe = load_recipe("tome-r8").to_dict()
    md = render_markdown(sample_report(recipe=recipe))
    tail = md[md.index("## Recipe"):]
    assert "tome:" in tail and "pitome:" not in tail and "evit:" not in tail
    assert "generate:" not in tail and "min_speedup: 1.0" in tail
    (tome,) = [ln for ln in tail.splitlines() if ln.startswith("tome:")]
    assert tome.startswith("tome: {") and "r: 8" in tome  # one line per section
    assert tail.count("## ") == 1  # nothing after the recipe


def test_recipe_keys_are_the_recipe_base_fields() -> None:
    from vtc.recipe import RecipeBase
    from vtc.validate.report import RECIPE_KEYS

    names = {f.alias or n for n, f in RecipeBase.model_fields.items()}
    assert set(RECIPE_KEYS) == names


def test_payoff_leads_the_page_in_plain_words() -> None:
    from vtc.report import PayoffInfo

    report = sample_report(payoff=PayoffInfo(
        "slower", "compression does not pay off on this model: the compressed engine is "
        "slower than the uncompressed one (0.85× [0.81, 0.89], paired, 95% interval over 20 "
        "rounds)", 1.1, 1.6, "--set tome.r=14", 1.62, "the FLOPs model, not a measurement"))
    lines = render_markdown(report).splitlines()
    assert lines[4].startswith("**Compression does not pay off on this model: the compressed")
    assert lines[6] == ("Try `--set tome.r=14` (FLOPs ratio 1.62, now 1.31): a suggestion "
                        "from the FLOPs model, not a measurement.")


def test_overwrite(tmp_path: Path) -> None:
    write_report(tmp_path, sample_report())
    json_path, md_path = write_report(tmp_path, sample_report(output="pooler_output"))
    assert json.loads(json_path.read_text())["output"] == "pooler_output"
    assert "`pooler_output`" in md_path.read_text()


def test_shipped_schema_is_the_report_type() -> None:
    """vtc/report.schema.json is generated from the dataclasses (`python -m vtc.report`)."""
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema(), (
        "vtc/report.schema.json is stale: python -m vtc.report > vtc/report.schema.json")


def test_schema_accepts_reports_and_refuses_broken_ones() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(_gated().to_dict(), schema)
    jsonschema.validate(sample_report(accuracy=None, dense=None, throughput=None).to_dict(),
                        schema)
    broken = _gated().to_dict()
    del broken["budget"]["flops_ratio"]
    with pytest.raises(jsonschema.ValidationError, match="flops_ratio"):
        jsonschema.validate(broken, schema)
    wrong = _gated().to_dict()
    wrong["gates"][0]["kind"] = "between"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def test_gate_to_dict_round_trip() -> None:
    g = Gate("min_speedup", 2.0, 1.5, True, "min")
    assert Report.from_dict(sample_report(gates=[g]).to_dict()).gates == [g]
