from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vtc.validate.bench import Timing
from vtc.validate.dense import dense_fidelity
from vtc.validate.gates import evaluate_gates
from vtc.validate.parity import compare, compare_outputs, worst_case
from vtc.validate.probe import linear_probe
from vtc.validate.report import render_markdown, write_report


def _probe_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ytr, yte = np.arange(40) % 2, np.arange(20) % 2
    xtr = ytr[:, None] * 4.0 + rng.normal(size=(40, 3))
    xte = yte[:, None] * 4.0 + rng.normal(size=(20, 3))
    return xtr, ytr, xte, xte[::-1].copy(), yte


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
        "accuracy": {
            **linear_probe(*_probe_data()),
            "dataset": {"name": "lfw-subset", "source": "skimage.data.lfw_subset()",
                        "n_train": 40, "n_test": 20, "seed": 0,
                        "selection": "class-stratified fixed-seed split"},
        },
        "dense": {**dense_fidelity(np.ones((2, 4, 4)), np.ones((2, 4, 4))), "output": "depth"},
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
    rep["gates"] = evaluate_gates(
        rep, {"min_speedup": 1.8, "max_parity_diff": 1e-4, "max_accuracy_drop": 5.0}
    )
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
        "## Accuracy (linear probe)",
        "## Dense output fidelity",
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
    acc = data["accuracy"]
    assert acc["dataset"]["name"] == "lfw-subset" and acc["n_test"] == 20
    assert acc["drop_points"] > 5  # compressed features are the test rows reversed
    assert "- dataset: **lfw-subset** (skimage.data.lfw_subset()), seed 0" in md
    assert "- split: train 40 / test 20 images, 2 classes" in md
    assert "- selection: class-stratified fixed-seed split" in md
    assert f"| baseline | {acc['baseline_acc']:.4g} |" in md
    assert f"| compressed | {acc['compressed_acc']:.4g} |" in md
    assert f"- accuracy drop: **{acc['drop_points']:.4g}** points" in md
    assert "FAIL max_accuracy_drop:" in md
    assert "output: **depth**, 2 images" in md
    assert "| Pearson correlation | 1 | 1 |" in md
    assert "| IoU above the baseline's q0.8 value | 1 | 1 |" in md
    assert "| image | Pearson | IoU |" in md
    assert md.index("## Fidelity") < md.index("## Accuracy") < md.index("## Dense")
    assert md.index("## Dense") < md.index("## Throughput")
    other = md[md.index("## Other"):]
    assert "accuracy" not in other and "dense" not in other
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_minimal_report_and_overwrite(tmp_path: Path) -> None:
    write_report(tmp_path, {"source": "a.onnx"})
    json_path, md_path = write_report(tmp_path, {"source": "b.onnx", "gates": []})
    assert json.loads(json_path.read_text()) == {"gates": [], "source": "b.onnx"}
    md = md_path.read_text()
    assert "b.onnx" in md and "a.onnx" not in md
    assert "**Overall: PASS**" in md
    assert "## Parity" not in md


def test_null_accuracy_and_dense_say_not_measured() -> None:
    md = render_markdown({"source": "a.onnx", "accuracy": None, "dense": None})
    assert "## Accuracy (linear probe)\n\nnot measured" in md
    assert "## Dense output fidelity\n\nnot measured" in md
    assert "## Other" not in md
    md = render_markdown({"source": "a.onnx"})
    assert "Accuracy" not in md and "Dense" not in md
