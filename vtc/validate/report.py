"""Write ``report.json`` (machine-readable) and ``report.md`` (for people).

Expected top-level keys, each optional: ``source``, ``recipe``, ``budget``
(``Budget.to_dict()``), ``parity`` (``{"export": ..., "engine": ...}``, each a
``worst_case`` / Stats dict, optionally with per-output Stats under ``outputs``;
the gates read ``parity.<stage>.max_abs_diff``), ``fidelity``, ``accuracy``
(``linear_probe`` dict plus ``dataset``: ``Split.meta()``), ``dense``
(``dense_fidelity`` dict plus ``output``: the output's name), ``throughput`` (runner name ->
Timing dict, plus scalars such as ``speedup`` and ``efficiency``), ``fusion``
(``fusion_summary``) and ``gates`` (list of Gate dicts). Anything else is listed
under "Other". ``accuracy`` and ``dense`` may be null: their sections then say
"not measured".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vtc.validate.gates import Gate, format_gate

_KNOWN = (
    "source",
    "recipe",
    "budget",
    "parity",
    "fidelity",
    "accuracy",
    "dense",
    "throughput",
    "fusion",
    "gates",
)
_NULL_SHOWN = ("accuracy", "dense")  # present but null: "not measured"
_DENSE_ROWS_MAX = 16  # per-image table only for small batches
_STAT_COLS = (
    "max_abs_diff",
    "mean_abs_diff",
    "p99_abs_diff",
    "max_rel_diff",
    "cosine_min",
    "cosine_mean",
)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, dataclasses, Paths, tuples and sets to JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        return to_jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(obj))
    return obj


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return "—" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
        return f"{x:.2e}"
    return f"{x:.4g}"


def _cos(x: Any) -> Any:
    """Cosines near 1 need more digits than other numbers."""
    return f"{x:.6f}" if isinstance(x, float) else x


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_num(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return [*lines, ""]


def _block(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value, ""]
    return ["```json", json.dumps(value, indent=2, sort_keys=True), "```", ""]


def _budget(b: dict[str, Any]) -> list[str]:
    lines = [f"method: **{b.get('method', '?')}**, FLOPs ratio: {_num(b.get('flops_ratio'))}"]
    if "flops_base" in b and "flops" in b:
        lines[0] += f" ({_num(b['flops_base'])} → {_num(b['flops'])} MACs/image)"
    lines.append("")
    tokens = list(b.get("tokens_per_layer") or [])
    if tokens:
        outs = [*tokens[1:], b.get("tokens_out", tokens[-1])]
        r = list(b.get("r_per_layer") or [0] * len(tokens))
        keep = list(b.get("keep_per_layer") or [0] * len(tokens))
        rows = [
            [i, t, o, r[i] if i < len(r) else "", keep[i] if i < len(keep) else ""]
            for i, (t, o) in enumerate(zip(tokens, outs, strict=True))
        ]
        lines += _table(["layer", "tokens in", "tokens out", "r", "keep"], rows)
    return lines


def _stat_row(label: str, s: dict[str, Any]) -> list[Any]:
    return [label] + [_cos(s.get(c)) if c.startswith("cosine") else s.get(c) for c in _STAT_COLS]


def _parity(p: dict[str, Any]) -> list[str]:
    """Rows per stage; a stage is a Stats / worst_case dict, may nest per-output
    Stats under ``outputs``, or may itself map output names to Stats."""
    rows: list[list[Any]] = []
    for stage, s in p.items():
        if not isinstance(s, dict):
            continue
        if "max_abs_diff" in s:
            rows.append(_stat_row(stage, s))
        per_output = s.get("outputs", s if "max_abs_diff" not in s else {})
        if isinstance(per_output, dict):
            rows += [
                _stat_row(f"{stage}/{out}", v)
                for out, v in per_output.items()
                if isinstance(v, dict) and "max_abs_diff" in v
            ]
    return _table(["stage", *_STAT_COLS], rows)


def _throughput(t: dict[str, Any]) -> list[str]:
    rows = [
        [name, v.get("batch"), v.get("img_per_s"), v.get("p50_ms"), v.get("p95_ms"), v.get("n")]
        for name, v in t.items()
        if isinstance(v, dict) and "p50_ms" in v
    ]
    lines = _table(["runner", "batch", "img/s", "p50 ms", "p95 ms", "n"], rows) if rows else []
    for key in ("speedup", "efficiency"):
        if key in t:
            lines.append(f"- {key}: **{_num(t[key])}**")
    lines += [
        f"- {k}: {_num(v)}"
        for k, v in t.items()
        if not isinstance(v, dict) and k not in ("speedup", "efficiency")
    ]
    return [*lines, ""]


def _fusion(f: dict[str, Any]) -> list[str]:
    base, comp = f.get("baseline", {}), f.get("compressed", {})
    ops = sorted(set(base) | set(comp))
    lines = _table(
        ["op", "baseline", "compressed"], [[op, base.get(op, 0), comp.get(op, 0)] for op in ops]
    )
    lost = f.get("lost") or {}
    lines.append(
        "lost fusions: " + (", ".join(f"{k} x{v}" for k, v in lost.items()) if lost else "none")
    )
    return [*lines, ""]


def _fidelity(d: dict[str, Any]) -> list[str]:
    return [f"- {k}: {_cos(v) if k.startswith('cosine') else _num(v)}" for k, v in d.items()] + [""]


def _accuracy(a: dict[str, Any]) -> list[str]:
    raw = a.get("dataset")
    ds: dict[str, Any] = raw if isinstance(raw, dict) else {}
    lines: list[str] = []
    if ds:
        lines.append(f"- dataset: **{ds.get('name', '?')}** ({ds.get('source', '?')}), "
                     f"seed {_num(ds.get('seed'))}")
    lines.append(f"- split: train {_num(a.get('n_train'))} / test {_num(a.get('n_test'))} "
                 f"images, {_num(a.get('n_classes'))} classes")
    if ds.get("selection"):
        lines.append(f"- selection: {ds['selection']}")
    lines.append("")
    lines += _table(
        ["model", "top-1 accuracy (%)"],
        [["baseline", a.get("baseline_acc")], ["compressed", a.get("compressed_acc")]],
    )
    lines.append(f"- accuracy drop: **{_num(a.get('drop_points'))}** points")
    lines.append(f"- embedding cosine: mean {_cos(a.get('embedding_cosine_mean'))}, "
                 f"min {_cos(a.get('embedding_cosine_min'))}")
    if a.get("classifier"):
        lines.append(f"- classifier: {a['classifier']}")
    shown = {"dataset", "n_train", "n_test", "n_classes", "baseline_acc", "compressed_acc",
             "drop_points", "embedding_cosine_mean", "embedding_cosine_min", "classifier"}
    lines += [f"- {k}: {_num(v)}" for k, v in a.items() if k not in shown]
    return [*lines, ""]


def _dense(d: dict[str, Any]) -> list[str]:
    q = d.get("threshold_quantile")
    lines = [f"output: **{d.get('output', '?')}**, {_num(d.get('n'))} images", ""]
    lines += _table(
        ["metric", "mean", "min"],
        [
            ["Pearson correlation", d.get("pearson_mean"), d.get("pearson_min")],
            [f"IoU above the baseline's q{_num(q)} value", d.get("iou_mean"), d.get("iou_min")],
        ],
    )
    per_p, per_i = d.get("pearson"), d.get("iou")
    if (isinstance(per_p, list) and isinstance(per_i, list)
            and len(per_p) == len(per_i) and 0 < len(per_p) <= _DENSE_ROWS_MAX):
        lines += _table(["image", "Pearson", "IoU"],
                        [[i, p, u] for i, (p, u) in enumerate(zip(per_p, per_i, strict=True))])
    return lines


def _as_gate(g: Any) -> Gate:
    if isinstance(g, Gate):
        return g
    value = g.get("value")
    return Gate(
        name=str(g.get("name", "?")),
        value=None if value is None else float(value),
        limit=float(g.get("limit", math.nan)),
        passed=bool(g.get("passed", False)),
        kind="max" if g.get("kind") == "max" else "min",
        note=str(g.get("note", "")),
    )


def _gates(gates: list[Any]) -> list[str]:
    parsed = [_as_gate(g) for g in gates]
    verdict = "PASS" if all(g.passed for g in parsed) else "FAIL"
    return [f"**Overall: {verdict}**", "", *(f"- `{format_gate(g)}`" for g in parsed), ""]


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable page for a (JSON-converted) report."""
    lines = ["# vtc report", ""]
    sections: list[tuple[str, str, Callable[[Any], list[str]], type]] = [
        ("Source", "source", _block, object),
        ("Recipe", "recipe", _block, object),
        ("Token budget", "budget", _budget, dict),
        ("Parity", "parity", _parity, dict),
        ("Fidelity", "fidelity", _fidelity, dict),
        ("Accuracy (linear probe)", "accuracy", _accuracy, dict),
        ("Dense output fidelity", "dense", _dense, dict),
        ("Throughput", "throughput", _throughput, dict),
        ("ORT fusions", "fusion", _fusion, dict),
        ("Gates", "gates", _gates, list),
    ]
    for title, key, render, expected in sections:
        value = report.get(key)
        if value is None:
            if key in _NULL_SHOWN and key in report:
                lines += [f"## {title}", "", "not measured", ""]
            continue
        lines += [f"## {title}", ""]
        lines += render(value) if isinstance(value, expected) else _block(value)
    other = {k: v for k, v in report.items() if k not in _KNOWN}
    if other:
        lines += ["## Other", "", *_block(other)]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` (sorted keys, indent 2) and ``out_dir/report.md``,
    each atomically. Returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = to_jsonable(report)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    _write_atomic(json_path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    _write_atomic(md_path, render_markdown(data))
    return json_path, md_path
