"""The results side of `vtc sweep`: per-point metrics read off each report, the
Pareto front, the markdown table (`sweep.md`) and the curve (`sweep.png`).

The table and the plot are rendered from the sweep.json content alone. The plot
uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

FIDELITY_LABEL = "fidelity: embedding cosine"
ACCURACY_LABEL = "linear-probe top-1 accuracy (%)"


# ---- metrics, from each point's report.json -----------------------------------------------


def _accuracy(report: dict[str, Any]) -> dict[str, Any] | None:
    """The linear-probe figures of report["accuracy"] (accuracies in %, drop in points)."""
    acc = report.get("accuracy")
    if not isinstance(acc, dict) or acc.get("compressed_acc") is None:
        return None
    base, comp = acc.get("baseline_acc"), float(acc["compressed_acc"])
    drop = acc.get("drop_points")
    if drop is None and base is not None:
        drop = float(base) - comp
    return {"baseline_acc": base, "compressed_acc": comp, "drop_points": drop,
            "embedding_cosine_mean": acc.get("embedding_cosine_mean"),
            "n_test": acc.get("n_test"), "dataset": acc.get("dataset")}


def point_metrics(label: str, value: Any, report: dict[str, Any], run_dir: str
                  ) -> dict[str, Any]:
    """The figures of one point, read off its report.json content."""
    b, th = report["budget"], report.get("throughput") or {}
    fid, dense = report.get("fidelity") or {}, report.get("dense") or {}
    return {
        "label": label, "value": value, "run": run_dir,
        "tokens_in": b["tokens_in"], "tokens_out": b["tokens_out"],
        "tokens_per_layer": b["tokens_per_layer"], "flops_ratio": b["flops_ratio"],
        "batch": th.get("batch"), "speedup": th.get("speedup"),
        "efficiency": th.get("efficiency"),
        "baseline_ips": th.get("baseline_ips"), "compressed_ips": th.get("compressed_ips"),
        "accuracy": _accuracy(report),
        "fidelity_cosine": fid.get("cosine_mean"), "top1_agreement": fid.get("top1_agreement"),
        "dense_pearson_mean": dense.get("pearson_mean"), "dense_iou_mean": dense.get("iou_mean"),
        "gates_passed": bool(report.get("passed")), "elapsed_s": report.get("elapsed_s"),
    }


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def result_line(pt: dict[str, Any]) -> str:
    acc = pt["accuracy"]
    quality = (f"accuracy {_fmt(acc['compressed_acc'], '.2f')} % "
               f"(drop {_fmt(acc['drop_points'], '.2f')} pts)" if acc else
               f"fidelity cosine {_fmt(pt['fidelity_cosine'], '.4f')}")
    return (f"tokens {pt['tokens_in']} → {pt['tokens_out']}, FLOPs {pt['flops_ratio']:.2f}×, "
            f"speedup {_fmt(pt['speedup'], '.2f')}× (efficiency {_fmt(pt['efficiency'], '.2f')})"
            f", {quality}")


def pareto_front(points: Sequence[dict[str, Any]]) -> list[bool]:
    """True for each point no other point dominates in (speedup, quality), both higher-better.

    A point is dominated when another is at least as good in both and strictly better
    in one; identical points do not dominate each other. Points missing either figure
    are never on the front and dominate nothing."""
    def pair(p: dict[str, Any]) -> tuple[float, float] | None:
        s, q = p.get("speedup"), p.get("quality")
        return None if s is None or q is None else (float(s), float(q))

    pairs = [pair(p) for p in points]
    front = []
    for a in pairs:
        front.append(a is not None and not any(
            b is not None and b[0] >= a[0] and b[1] >= a[1] and b != a for b in pairs))
    return front


def set_quality(points: list[dict[str, Any]]) -> dict[str, str]:
    """Accuracy when every point measured it, else the embedding cosine."""
    if points and all(p["accuracy"] for p in points):
        for p in points:
            p["quality"] = p["accuracy"]["compressed_acc"]
        return {"metric": "accuracy", "label": ACCURACY_LABEL}
    for p in points:
        p["quality"] = p["fidelity_cosine"]
    return {"metric": "fidelity", "label": FIDELITY_LABEL}


def dataset_name(points: list[dict[str, Any]], inputs: dict[str, Any]) -> str:
    """What the quality was measured on, for titles."""
    acc = points[0]["accuracy"] if points else None
    if acc:
        ds = acc.get("dataset")
        name = ds.get("name", "dataset") if isinstance(ds, dict) else ds or "dataset"
        n = acc.get("n_test") or (ds.get("n_test") if isinstance(ds, dict) else None)
        return f"{name}, linear probe" + (f", {n} test images" if n else "")
    kind, count = inputs.get("kind"), inputs.get("count")
    if kind == "images":
        return f"images in {inputs.get('folder')} ({count})"
    if kind == "synthetic":
        return f"synthetic inputs (seed {inputs.get('seed')}, {count} samples)"
    return f"{kind or 'unknown'} inputs ({count})"


def machine_info() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": version("torch"),
            "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu")}


# ---- sweep.md and sweep.png -------------------------------------------------------------


def _num(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _has(points: list[dict[str, Any]], key: str) -> bool:
    return any(p.get(key) is not None for p in points)


def table(sweep: dict[str, Any]) -> list[str]:
    """The markdown table of every point (Pareto points starred)."""
    points = sweep["points"]
    acc = sweep["quality"]["metric"] == "accuracy"
    head = [sweep["key_given"], "tokens out", "FLOPs ratio", "speed-up (measured)",
            "efficiency", "baseline img/s", "compressed img/s"]
    head += ["top-1 acc (%)", "drop (pts)"] if acc else ["fidelity: embedding cosine"]
    agreement = not acc and _has(points, "top1_agreement")
    head += ["top-1 agreement"] if agreement else []
    dense = _has(points, "dense_pearson_mean") or _has(points, "dense_iou_mean")
    head += ["dense pearson", "dense IoU"] if dense else []
    head.append("Pareto")
    rows = []
    for p in points:
        row = [p["label"].split("=", 1)[1], str(p["tokens_out"]), _num(p["flops_ratio"], ".2f"),
               _num(p["speedup"], ".2f"), _num(p["efficiency"], ".2f"),
               _num(p["baseline_ips"], ".1f"), _num(p["compressed_ips"], ".1f")]
        if acc:
            row += [_num(p["accuracy"]["compressed_acc"], ".2f"),
                    _num(p["accuracy"]["drop_points"], ".2f")]
        else:
            row.append(_num(p["fidelity_cosine"], ".4f"))
        row += [_num(p["top1_agreement"], ".3f")] if agreement else []
        row += [_num(p["dense_pearson_mean"], ".3f"),
                _num(p["dense_iou_mean"], ".3f")] if dense else []
        row.append("★" if p["pareto"] else "")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(sweep: dict[str, Any]) -> str:
    src, m = sweep["source"], sweep["machine"]
    batches = sorted({p["batch"] for p in sweep["points"] if p.get("batch") is not None})
    values = ", ".join(p["label"].split("=", 1)[1] for p in sweep["points"])
    lines = [
        f"# vtc sweep: {src['name']} — {sweep['key']}",
        "",
        f"Model `{src['spec']}` ({src.get('family') or src.get('kind')}), base recipe "
        f"`{sweep['base_recipe']['name']}`, `{sweep['key']}` ∈ {{{values}}}. "
        f"Quality: **{sweep['quality']['label']}** on {sweep['dataset']}.",
        "",
        *table(sweep),
        "",
        "★ Pareto front (no other point is at least as fast, measured, and at least as good, "
        f"and better in one): {', '.join(sweep['pareto']) or 'none'}.",
        "",
        "Speed-up is measured (ONNX Runtime, interleaved timing, batch "
        f"{', '.join(map(str, batches)) or '?'}, on {m['platform']} with {m['cpu_count']} "
        "CPUs); the FLOPs ratio is analytic; efficiency = speed-up / FLOPs ratio. "
        "Each point's full bundle and report: `runs/<value>/`.",
        "",
        "Plot: [sweep.png](sweep.png) (quality vs measured speed-up, and vs the analytic "
        "FLOPs ratio).",
        "",
        "![quality vs speed-up](sweep.png)",
        "",
        "Made by:",
        "",
        "```bash",
        sweep["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_plot(sweep: dict[str, Any], path: Path) -> None:
    """Quality vs measured speed-up (Pareto front highlighted) and, beside it, quality vs
    the analytic FLOPs ratio (dashed) with arrows to the measured points: the gap between
    what the FLOPs promise and what the engine delivers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = [p for p in sweep["points"] if p.get("quality") is not None]
    measured = [p for p in pts if p.get("speedup") is not None]
    front = sorted((p for p in measured if p["pareto"]), key=lambda p: p["speedup"])
    ylabel = sweep["quality"]["label"]

    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)

    if front:
        left.plot([p["speedup"] for p in front], [p["quality"] for p in front], "-",
                  color="tab:red", lw=7, alpha=0.2, solid_capstyle="round", label="Pareto front")
        left.scatter([p["speedup"] for p in front], [p["quality"] for p in front], s=170,
                     facecolors="none", edgecolors="tab:red", linewidths=2, zorder=3)
    left.plot([p["speedup"] for p in measured], [p["quality"] for p in measured], "o-",
              color="tab:blue", label="measured speed-up", zorder=4)
    for p in measured:
        left.annotate(p["label"], (p["speedup"], p["quality"]), textcoords="offset points",
                      xytext=(6, 6), fontsize=8)
    left.set_xlabel("measured speed-up over the uncompressed engine (×)")
    left.set_ylabel(ylabel)
    left.set_title("quality vs measured speed-up")

    right.plot([p["flops_ratio"] for p in pts], [p["quality"] for p in pts], "s--",
               color="tab:orange", label="analytic FLOPs ratio")
    right.plot([p["speedup"] for p in measured], [p["quality"] for p in measured], "o-",
               color="tab:blue", alpha=0.45, label="measured speed-up")
    for p in pts:
        right.annotate(p["label"], (p["flops_ratio"], p["quality"]), textcoords="offset points",
                       xytext=(6, -12), fontsize=8, color="tab:orange")
        if p.get("speedup") is not None:
            right.annotate("", xy=(p["speedup"], p["quality"]),
                           xytext=(p["flops_ratio"], p["quality"]),
                           arrowprops={"arrowstyle": "->", "color": "gray", "alpha": 0.6})
    right.set_xlabel("speed-up (×): analytic FLOPs ratio (dashed) → measured (solid)")
    right.set_title("analytic vs measured")

    for ax in (left, right):
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.margins(x=0.12, y=0.1)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    src = sweep["source"]
    fig.suptitle(f"{src['name']} ({src.get('family') or src.get('kind')}): {ylabel} vs "
                 f"speed-up, {sweep['key']} sweep — {sweep['dataset']}", fontsize=11)
    fig.savefig(path, format="png")
