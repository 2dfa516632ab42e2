from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vtc.validate.bench import Timing
from vtc.validate.gates import evaluate_gates
from vtc.validate.parity import compare, compare_outputs, worst_case
from vtc.validate.report import write_report


def _report() -> dict[str, object]:
    stats = compare(np.ones((2, 3)), np.ones((2, 3)) + 1e-6)
    per_output = compare_outputs(
        {"logits": np.ones((2, 3)), "pooled": np.ones((2, 4))},
        {"logits": np.ones((2, 3)) + 2e-6, "pooled": np.ones((2, 4))},
    )
    engine = {**worst_case(per_output), "outputs": per_output}
    rep: dict[str, object] = {
        "source": "hf:google/vit-base-patch16-224",
        "recipe": {"name": "tome-r8", "method": "tome"},
        "budget": {
            "method": "tome",
            "tokens_per_layer": [197, 189, 181],
            "tokens_out": 173,
            "r_per_layer": [8, 8, 8],
            "keep_per_layer": [0, 0, 0],
            "flops_ratio": np.float64(1.31),
            "flops_base": 1000,
            "flops": 763,
        },
        "parity": {"export": stats, "engine": engine, "legacy": {"logits": stats}},
        "fidelity": {"cosine_mean": np.float32(0.998), "top1_agreement": 0.97, "n": np.int64(64)},
        "throughput": {
            "baseline": Timing(10.0, 11.0, 10.2, 800.0, 20, 8),
            "compressed": Timing(7.0, 7.5, 7.1, 1142.9, 20, 8).to_dict(),
            "speedup": 1.4286,
            "efficiency": 1.09,
        },
        "fusion": {"baseline": {"Gelu": 3}, "compressed": {"Gelu": 2}, "lost": {"Gelu": 1}},
        "out_dir": Path("/tmp/x"),
        "array": np.arange(3),
    }
    rep["gates"] = evaluate_gates(rep, {"min_speedup": 1.8, "max_parity_diff": 1e-4})
    return rep


def test_write_report_json_and_md(tmp_path: Path) -> None:
    json_path, md_path = write_report(tmp_path / "out", _report())
    assert json_path == tmp_path / "out" / "report.json"
    data = json.loads(json_path.read_text())
    assert data["budget"]["flops_ratio"] == 1.31
    assert data["fidelity"]["n"] == 64
    assert data["throughput"]["baseline"]["p50_ms"] == 10.0
    assert data["parity"]["export"]["shape"] == [2, 3]
    assert data["parity"]["engine"]["worst_output"] == "logits"
    assert data["gates"][0]["name"] == "min_speedup" and data["gates"][0]["passed"] is False
    assert data["array"] == [0, 1, 2] and data["out_dir"] == "/tmp/x"
    text = json_path.read_text()
    assert text.index('"array"') < text.index('"budget"') < text.index('"throughput"')
    # the file re-parses into the same report the gates read
    assert not evaluate_gates(data, {"min_speedup": 1.8})[0].passed

    md = md_path.read_text()
    for heading in (
        "## Source",
        "## Recipe",
        "## Token budget",
        "## Parity",
        "## Fidelity",
        "## Throughput",
        "## ORT fusions",
        "## Gates",
        "## Other",
    ):
        assert heading in md
    assert "| 0 | 197 | 189 | 8 | 0 |" in md
    assert "| 2 | 181 | 173 | 8 | 0 |" in md
    assert "| baseline | 8 | 800 | 10 | 11 | 20 |" in md
    assert "speedup: **1.429**" in md
    assert "lost fusions: Gelu x1" in md
    assert "**Overall: FAIL**" in md
    assert "FAIL min_speedup: 1.43 < 1.80" in md
    assert "ok   max_parity_diff: 2e-06 <= 1e-04" in md
    assert "| engine | 2.00e-06 |" in md
    assert "| engine/pooled | 0 | 0 | 0 | 0 | 1.000000 | 1.000000 |" in md
    assert "| legacy/logits | 1.00e-06 |" in md
    assert "- cosine_mean: 0.998000" in md
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_minimal_report_and_overwrite(tmp_path: Path) -> None:
    write_report(tmp_path, {"source": "a.onnx"})
    json_path, md_path = write_report(tmp_path, {"source": "b.onnx", "gates": []})
    assert json.loads(json_path.read_text()) == {"gates": [], "source": "b.onnx"}
    md = md_path.read_text()
    assert "b.onnx" in md and "a.onnx" not in md
    assert "**Overall: PASS**" in md
    assert "## Parity" not in md
