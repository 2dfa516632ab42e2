"""The results side of `vtc sweep`: per-point metrics read off each report, the
Pareto front, the markdown table (`sweep.md`) and the curves (`sweep.png`).

The table and the plot are rendered from the sweep.json content alone; a sweep
of several series (one per --recipe) gets a `series` column in the table and
one curve per series, in its own colour and marker, in both panels. The plot
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
VLM_LABEL = "fidelity: first-step logits cosine vs the uncut model"


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


def _vlm_point(label: str, value: Any, report: dict[str, Any], run_dir: str
               ) -> dict[str, Any]:
    """A vision-language point: its speed is the decoder's prefill speed-up over the uncut
    bundle (the paired estimate and interval of its interleaved rounds; 1 / the prefill
    ratio), its quality the first-step logits cosine against the uncut model."""
    from vtc import stats

    c, cost, fid = report["cuts"], report.get("cost") or {}, report["fidelity"]
    speed = low = high = None
    u, k = cost.get("prefill_samples_ms_uncut") or [], cost.get("prefill_samples_ms") or []
    if u and k:
        speed = stats.paired_speedup(u, k)
        if len(u) >= 3:  # an interval for the plot's error bar
            low, high = stats.interval(stats.speedup_draws(u, k), 0.95)
    return {
        "label": label, "value": value, "run": run_dir, "kind": "vlm",
        "tokens_in": c["visual_tokens_uncut"], "tokens_out": c["visual_tokens"],
        "tokens_per_layer": c["lm_layer_tokens"], "flops_ratio": c["flops_ratio"],
        "lm_gflops": c.get("lm_gflops"), "prefill_ratio": cost.get("prefill_ratio"),
        "prefill_ms": cost.get("prefill_ms"), "prefill_ms_uncut": cost.get("prefill_ms_uncut"),
        "batch": 1, "speedup": speed, "speedup_low": low, "speedup_high": high,
        "efficiency": None if speed is None else round(speed / c["flops_ratio"], 4),
        "baseline_ips": None, "compressed_ips": None, "accuracy": None,
        "fidelity_cosine": fid["first_logits_cosine_mean"],
        "top1_agreement": fid["top1_agreement"],
        "tokens_equal": report["parity"]["generation"]["tokens_equal"],
        "random_weights": fid.get("random_weights"),
        "dense_pearson_mean": None, "dense_iou_mean": None,
        "gates_passed": bool(report.get("passed")), "elapsed_s": report.get("elapsed_s"),
    }


def point_metrics(label: str, value: Any, report: dict[str, Any], run_dir: str
                  ) -> dict[str, Any]:
    """The figures of one point, read off its report.json content."""
    if report.get("kind") == "vlm":
        return _vlm_point(label, value, report, run_dir)
    b, th = report["budget"], report.get("throughput") or {}
    ci = th.get("speedup_ci") or {}
    fid, dense = report.get("fidelity") or {}, report.get("dense") or {}
    return {
        "label": label, "value": value, "run": run_dir,
        "tokens_in": b["tokens_in"], "tokens_out": b["tokens_out"],
        "tokens_per_layer": b["tokens_per_layer"], "flops_ratio": b["flops_ratio"],
        # the paired estimate and its interval: the one speedup every view shows
        "batch": th.get("batch"), "speedup": th.get("speedup"),
        "speedup_low": ci.get("low"), "speedup_high": ci.get("high"),
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
    if pt.get("kind") == "vlm":
        return (f"visual tokens {pt['tokens_in']} → {pt['tokens_out']}, LM FLOPs "
                f"{pt['flops_ratio']:.2f}×, prefill ratio {_fmt(pt['prefill_ratio'], '.3f')} "
                f"(speed-up {speedup_cell(pt)}), first-logits cosine "
                f"{_fmt(pt['fidelity_cosine'], '.4f')}, tokens equal to eager "
                f"{_fmt(pt['tokens_equal'], '.2f')}")
    quality = (f"accuracy {_fmt(acc['compressed_acc'], '.2f')} % "
               f"(drop {_fmt(acc['drop_points'], '.2f')} pts)" if acc else
               f"fidelity cosine {_fmt(pt['fidelity_cosine'], '.4f')}")
    return (f"tokens {pt['tokens_in']} → {pt['tokens_out']}, FLOPs {pt['flops_ratio']:.2f}×, "
            f"speedup {speedup_cell(pt)} (efficiency {_fmt(pt['efficiency'], '.2f')})"
            f", {quality}")


def speedup_cell(pt: dict[str, Any]) -> str:
    """`1.23× [1.09, 1.67]`: the paired estimate and its interval (`n/a` when not timed;
    the estimate alone for a point of an older sweep.json without the interval)."""
    s, lo, hi = pt.get("speedup"), pt.get("speedup_low"), pt.get("speedup_high")
    if s is None:
        return "n/a"
    return f"{s:.2f}×" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


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
    if points and all(p.get("kind") == "vlm" for p in points):
        return {"metric": "fidelity", "label": VLM_LABEL}
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
    if kind == "prompts":
        weights = " (random weights)" if points and points[0].get("random_weights") else ""
        return f"{count} prompts × {inputs.get('max_new_tokens')} greedy tokens{weights}"
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


def series_points(sweep: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(series name, its points) in sweep order: one entry for a one-series sweep."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in sweep["points"]:
        groups.setdefault(p.get("series") or "", []).append(p)
    return list(groups.items())


def several(sweep: dict[str, Any]) -> bool:
    """Whether the sweep compares several series (recipes)."""
    return len(sweep.get("series") or []) > 1


def vlm(sweep: dict[str, Any]) -> bool:
    """Whether the sweep's points are vision-language bundles."""
    return sweep.get("kind") == "vlm"


def _vlm_table(sweep: dict[str, Any]) -> list[str]:
    multi = several(sweep)
    head = (["series"] if multi else []) + [
        sweep["key_given"], "visual tokens", "LM layer tokens", "LM FLOPs ratio",
        "prefill ratio (cut / uncut)", "prefill speed-up (paired, 95 % interval)",
        "first-logits cosine", "first-token agreement", "tokens = eager", "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, pts in series_points(sweep):
        for p in pts:
            row = ([p["series"]] if multi else []) + [
                p["label"].split("=", 1)[1], f"{p['tokens_in']} → {p['tokens_out']}",
                "→".join(map(str, p["tokens_per_layer"])), _num(p["flops_ratio"], ".2f"),
                _num(p.get("prefill_ratio"), ".3f"), speedup_cell(p),
                _num(p["fidelity_cosine"], ".4f"), _num(p["top1_agreement"], ".2f"),
                _num(p.get("tokens_equal"), ".2f"), "★" if p["pareto"] else ""]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def table(sweep: dict[str, Any]) -> list[str]:
    """The markdown table of every point (Pareto points starred, each series' own front);
    with several series a first `series` column, rows grouped by series."""
    if vlm(sweep):
        return _vlm_table(sweep)
    multi = several(sweep)
    points = [p for _, pts in series_points(sweep) for p in pts]
    acc = sweep["quality"]["metric"] == "accuracy"
    head = ["series"] if multi else []
    head += [sweep["key_given"], "tokens out", "FLOPs ratio", "speed-up (paired, 95 % interval)",
             "efficiency", "baseline img/s", "compressed img/s"]
    head += ["top-1 acc (%)", "drop (pts)"] if acc else ["fidelity: embedding cosine"]
    agreement = not acc and _has(points, "top1_agreement")
    head += ["top-1 agreement"] if agreement else []
    dense = _has(points, "dense_pearson_mean") or _has(points, "dense_iou_mean")
    head += ["dense pearson", "dense IoU"] if dense else []
    head.append("Pareto")
    rows = []
    for p in points:
        row = [p["series"]] if multi else []
        row += [p["label"].split("=", 1)[1], str(p["tokens_out"]), _num(p["flops_ratio"], ".2f"),
                speedup_cell(p), _num(p["efficiency"], ".2f"),
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


def _describe(sweep: dict[str, Any]) -> tuple[str, str, str]:
    """(what was swept, the Pareto sentence's list, where the runs are) for sweep.md."""
    groups = series_points(sweep)
    values = ", ".join(p["label"].split("=", 1)[1] for p in groups[0][1])
    if not several(sweep):
        return (f"base recipe `{sweep['base_recipe']['name']}`, `{sweep['key']}` ∈ {{{values}}}",
                ", ".join(sweep["pareto"]) or "none", "runs/<value>/")
    curves = ", ".join(f"`{s['name']}` (recipe `{s['recipe']['name']}`, `{s['key']}`)"
                       for s in sweep["series"])
    fronts = "; ".join(f"{s['name']}: {', '.join(s['pareto']) or 'none'}"
                       for s in sweep["series"])
    return (f"{len(sweep['series'])} series — {curves} — each over `{sweep['key_given']}` ∈ "
            f"{{{values}}}", fronts, "runs/<series>/<value>/")


def render_markdown(sweep: dict[str, Any]) -> str:
    src, m = sweep["source"], sweep["machine"]
    batches = sorted({p["batch"] for p in sweep["points"] if p.get("batch") is not None})
    swept, fronts, runs = _describe(sweep)
    what = (" vs ".join(s["name"] for s in sweep["series"]) + f" over {sweep['key_given']}"
            if several(sweep) else sweep["key"])
    lines = [
        f"# vtc sweep: {src['name']} — {what}",
        "",
        f"Model `{src['spec']}` ({src.get('family') or src.get('kind')}), {swept}. "
        f"Quality: **{sweep['quality']['label']}** on {sweep['dataset']}"
        + (" (the same metric for every series)." if several(sweep) else "."),
        "",
        *table(sweep),
        "",
        "★ Pareto front" + (" of each series" if several(sweep) else "")
        + " (no other point is at least as fast, measured, and at least as good, "
        f"and better in one): {fronts}.",
        "",
        (("The prefill speed-up is the decoder's over the uncut bundle's (the builder's "
          "decoder as written, reading every visual token), timed interleaved in each "
          f"bundle's report on {m['platform']} with {m['cpu_count']} CPUs: the paired "
          "estimate (1 / the prefill ratio; geometric mean of the per-round ratios, 10 % "
          "trimmed) and its 95 % bootstrap interval; the LM FLOPs ratio is analytic. "
          "Quality is the first-step logits cosine against the uncut model"
          + (" — with random weights, a plumbing figure, not a quality one" if any(
              p.get("random_weights") for p in sweep["points"]) else "") + ". ")
         if vlm(sweep) else
         ("Speed-up is measured (ONNX Runtime, interleaved timing, batch "
          f"{', '.join(map(str, batches)) or '?'}, on {m['platform']} with {m['cpu_count']} "
          "CPUs) as each bundle's report gives it: the paired estimate (geometric mean of the "
          "per-round ratios, 10 % trimmed) and its 95 % bootstrap interval; the FLOPs ratio "
          "is analytic; efficiency = speed-up / FLOPs ratio. "))
        + f"Each point's full bundle and report: `{runs}`.",
        "",
        "Plot: [sweep.png](sweep.png) (quality vs measured speed-up, and vs the analytic "
        "FLOPs ratio" + (", one curve per series)." if several(sweep) else ")."),
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


COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def write_plot(sweep: dict[str, Any], path: Path) -> None:
    """Quality vs measured speed-up (each series' Pareto front highlighted) and, beside
    it, quality vs the analytic FLOPs ratio (dashed, hollow markers) with arrows to the
    measured points (solid): the gap between what the FLOPs promise and what the engine
    delivers. One colour and marker per series, a legend naming them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ylabel = sweep["quality"]["label"]
    fig = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    groups = series_points(sweep)
    for i, (name, points) in enumerate(groups):
        c, mk = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        label = name if several(sweep) else "measured speed-up"
        pts = [p for p in points if p.get("quality") is not None]
        measured = [p for p in pts if p.get("speedup") is not None]
        front = sorted((p for p in measured if p["pareto"]), key=lambda p: p["speedup"])
        if front:
            left.plot([p["speedup"] for p in front], [p["quality"] for p in front], "-",
                      color=c, lw=7, alpha=0.2, solid_capstyle="round")
            left.scatter([p["speedup"] for p in front], [p["quality"] for p in front], s=170,
                         facecolors="none", edgecolors=c, linewidths=2, zorder=3)
        left.plot([p["speedup"] for p in measured], [p["quality"] for p in measured], f"{mk}-",
                  color=c, label=label, zorder=4)
        bars = [p for p in measured if p.get("speedup_low") is not None
                and p.get("speedup_high") is not None]
        if bars:  # the paired speedup's 95 % interval
            left.errorbar([p["speedup"] for p in bars], [p["quality"] for p in bars],
                          xerr=[[max(0.0, p["speedup"] - p["speedup_low"]) for p in bars],
                                [max(0.0, p["speedup_high"] - p["speedup"]) for p in bars]],
                          fmt="none", ecolor=c, alpha=0.5, capsize=3, zorder=3)
        for p in measured:
            left.annotate(p["label"], (p["speedup"], p["quality"]), textcoords="offset points",
                          xytext=(6, 6 + 10 * i), fontsize=8, color=c)
        right.plot([p["flops_ratio"] for p in pts], [p["quality"] for p in pts], f"{mk}--",
                   color=c, mfc="none", label=f"{name}: analytic FLOPs ratio"
                   if several(sweep) else "analytic FLOPs ratio")
        right.plot([p["speedup"] for p in measured], [p["quality"] for p in measured],
                   f"{mk}-", color=c, alpha=0.45, label=f"{name}: measured"
                   if several(sweep) else "measured speed-up")
        for p in pts:
            right.annotate(p["label"], (p["flops_ratio"], p["quality"]), fontsize=8, color=c,
                           textcoords="offset points", xytext=(6, -12 - 10 * i))
            if p.get("speedup") is not None:
                right.annotate("", xy=(p["speedup"], p["quality"]),
                               xytext=(p["flops_ratio"], p["quality"]),
                               arrowprops={"arrowstyle": "->", "color": "gray", "alpha": 0.6})
    ring = Line2D([], [], ls="none", marker="o", ms=12, mfc="none", mec="gray", mew=2,
                  label="Pareto front" + (" (per series)" if several(sweep) else ""))
    left.set_xlabel("measured prefill speed-up over the uncut bundle (× = 1 / prefill ratio)"
                    if vlm(sweep) else "measured speed-up over the uncompressed engine (×)")
    if vlm(sweep):  # the same axis read as the prefill ratio the report gives
        import numpy as np

        def inverse(x: Any) -> Any:
            return 1.0 / np.maximum(np.asarray(x, dtype=float), 1e-9)

        top = left.secondary_xaxis("top", functions=(inverse, inverse))
        top.set_xlabel("prefill ratio (cut / uncut latency)")
    left.set_ylabel(ylabel)
    left.set_title("quality vs measured speed-up")
    right.set_xlabel(("prefill speed-up (×): analytic LM FLOPs ratio (dashed) → measured "
                      "(solid)") if vlm(sweep) else
                     "speed-up (×): analytic FLOPs ratio (dashed) → measured (solid)")
    right.set_title("analytic vs measured")
    for ax in (left, right):
        ax.axvline(1.0, color="gray", ls=":", lw=1)
        ax.margins(x=0.12, y=0.1)
        ax.grid(True, alpha=0.3)
    handles, _ = left.get_legend_handles_labels()
    left.legend(handles=[*handles, ring], loc="best", fontsize=8)
    right.legend(loc="best", fontsize=8)
    src = sweep["source"]
    what = (" vs ".join(name for name, _ in groups) + f" over {sweep['key_given']}"
            if several(sweep) else f"{sweep['key']} sweep")
    fig.suptitle(f"{src['name']} ({src.get('family') or src.get('kind')}): {ylabel} vs "
                 f"speed-up, {what} — {sweep['dataset']}", fontsize=11)
    fig.savefig(path, format="png")
