"""Write `report.json` (machine-readable) and `report.md` (for people) from the typed
`vtc.report.Report`.

report.md leads with the verdict: the gates line and the payoff (did compression pay
off, and if not which budget to try), then one results table (tokens, FLOPs, parity,
fidelity, accuracy, speed), the gates, the details, and the recipe last (only the
sections of the methods used). Every field of the report has its place on the page:
`SUMMARY` fields in the header lines, `SECTIONS` fields as sections (a test holds the
two to the dataclass). A main tier that was not measured says so in the results
table; a null tier has no section."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vtc.report import (
    AccuracyInfo,
    BudgetInfo,
    DenseInfo,
    DeploymentInfo,
    EngineInfo,
    FidelityInfo,
    FusionInfo,
    Gate,
    GraphInfo,
    InputsInfo,
    MachineInfo,
    ParityInfo,
    Report,
    SourceInfo,
    Stats,
    TaskInfo,
    ThroughputInfo,
    TrtLintInfo,
    ZeroShotInfo,
    output_kind,
    speedup_text,
)
from vtc.util import write_atomic
from vtc.validate.gates import format_gate

_DENSE_ROWS_MAX = 16  # per-image table only for small batches
_STAT_COLS = ("max_abs_diff", "mean_abs_diff", "p99_abs_diff", "max_rel_diff", "cosine_min",
              "cosine_mean")


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
    lines += ["| " + " | ".join(c if isinstance(c, str) else _num(c) for c in r) + " |"
              for r in rows]
    return [*lines, ""]


def _source(s: SourceInfo) -> list[str]:
    return [f"- `{s.spec}` ({s.kind}; model type {_num(s.model_type)}, family "
            f"{_num(s.family)})", ""]


def _budget(b: BudgetInfo) -> list[str]:
    lines = [f"methods: **{' + '.join(b.methods) or 'none'}**, tokens {b.tokens_in} → "
             f"{b.tokens_out} ({b.protected} protected), FLOPs ratio **{_num(b.flops_ratio)}** "
             f"({_num(b.flops_base)} → {_num(b.flops)} MACs/image; the reductions' own "
             f"bookkeeping: {_num(b.flops_overhead)})", ""]
    lines += [f"- {m} ranks tokens by **{s}** "
              f"({'attention from the CLS token' if s == 'cls' else 'attention received'})"
              for m, s in b.scores.items()] + ([""] if b.scores else [])
    rows = [[lp.index, lp.tokens_in, lp.tokens_out, lp.method,
             ", ".join(f"{k}={_num(v)}" for k, v in sorted(lp.params.items())) or "",
             "yes" if lp.attn_bias else "", lp.formulation] for lp in b.layers]
    lines += _table(["block", "tokens in", "tokens out", "method", "parameters",
                     "log-size bias", "formulation"], rows)
    settings = [f"- {m}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.items())
                for m, cfg in b.settings.items()]
    return [*lines, "resolved settings:", "", *settings, ""] if settings else lines


def _graph(g: GraphInfo) -> list[str]:
    lines = [f"- blocks found: {g.blocks}; reductions inserted: {g.sites}; constants fixed: "
             f"{g.constants_fixed}; batch constants made dynamic: {g.batch_constants}"]
    if g.unmerge is not None:
        lines.append(f"- unmerge after block {g.unmerge.after_block} back to {g.unmerge.tokens} "
                     f"tokens, before {', '.join(g.unmerge.consumers) or '(forced)'}")
    if g.tokens_out is not None:
        t = g.tokens_out
        lines.append(f"- token-sequence output(s) {', '.join(t.outputs)}: tokens_out "
                     f"**{t.mode}**, {t.tokens} tokens"
                     + (f"; each token's size in output `{t.sizes_output}`"
                        if t.sizes_output else ""))
    if g.reductions:
        first = g.reductions[0]
        forms = sorted({f for r in g.reductions for f in r.cost_us})
        lines += ["", f"each reduction site's formulation (the cost model's µs per batch of "
                  f"{first.batch} on `{first.engine}` prices, vtc.budget; nodes: what the site "
                  "added, with the log-size bias its sizes cause in the next block):", ""]
        lines += _table(
            ["block", "method", "formulation", "chosen by", "nodes",
             *(f"µs {f}" for f in forms), *(f"nodes {f}" for f in forms),
             *(f"MACs/image {f}" for f in forms), *(f"elements/image {f}" for f in forms)],
            [[r.block, r.method, f"**{r.formulation}**", r.chosen_by, r.nodes,
              *(r.cost_us.get(f) for f in forms), *(r.model_nodes.get(f) for f in forms),
              *(r.macs.get(f) for f in forms), *(r.elements.get(f) for f in forms)]
             for r in g.reductions])[:-1]
    grew = {op: n - g.op_counts_before.get(op, 0) for op, n in g.op_counts_after.items()
            if n != g.op_counts_before.get(op, 0)}
    change = ", ".join(f"{k} {v:+d}" for k, v in grew.items()) or "no change"
    lines.append(f"- nodes: {sum(g.op_counts_before.values())} → "
                 f"{sum(g.op_counts_after.values())} ({change})")
    return [*lines, ""]


def _opts(po: dict[str, dict[str, str]]) -> str:
    return "; ".join(f"{p}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                     for p, o in po.items()) or "none"


def _engine(e: EngineInfo) -> list[str]:
    lines = [f"- deployed: {e.kind} ({e.precision}), `{e.file}`; providers: "
             f"{', '.join(e.providers) or '—'}; provider options: {_opts(e.provider_options)}",
             f"- CUDA graph: {'yes' if e.cuda_graph else 'no'}; timing with I/O binding: "
             f"{'yes' if e.io_binding else 'no'}"]
    if e.reference is not None:
        lines.append(f"- parity and fidelity ran on reference engines: {e.reference.precision}, "
                     f"provider options: {_opts(e.reference.provider_options)}")
    else:
        lines.append("- parity and fidelity ran on the deployed engines")
    if e.nodes:
        lines.append("- engine nodes: " + ", ".join(f"{k} {v}" for k, v in e.nodes.items()))
    if e.conversion:
        lines.append(f"- {e.precision} conversion: " + ", ".join(f"{k} {v}" for k, v in
                                                       e.conversion.items()))
    if e.placement:
        lines.append("- node placement: " + ", ".join(f"{k} {v}" for k, v in
                                                      e.placement.items()))
    if e.fallback:
        lines.append("- off the CUDA EP: " + ", ".join(f"`{n}`" for n in e.fallback))
    return [*lines, ""]


def _deployment(d: DeploymentInfo) -> list[str]:
    lines = [f"deployed ({d.precision}) compressed engine vs the reference compressed engine, "
             f"{d.n} inputs ({d.basis}):",
             f"- cosine: mean {_cos(d.cosine_mean)}, min {_cos(d.cosine_min)}"]
    if d.top1_agreement is not None:
        lines.append(f"- top-1 agreement: {_num(d.top1_agreement)}")
    if d.accuracy is not None and d.accuracy_drop_points is not None:
        lines.append(f"- probe accuracy: {_num(d.accuracy)} % (drop vs the reference engine "
                     f"{_num(d.accuracy_drop_points)} points)")
    return [*lines, ""]


def _machine(m: MachineInfo) -> list[str]:
    return [f"- {m.cpu}, {m.cores} cores, {m.system}; Python {m.python}, onnxruntime "
            f"{m.onnxruntime or 'not installed'}; providers {', '.join(m.providers) or '—'}", ""]


def _ops(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


def _fusions(f: FusionInfo) -> list[str]:
    lost = ", ".join(f"{k} x{v}" for k, v in f.lost.items()) if f.lost else "none"
    return [f"- baseline: {_ops(f.baseline)}", f"- compressed: {_ops(f.compressed)}",
            f"- lost fusions: {lost}", ""]


def _inputs(i: InputsInfo) -> list[str]:
    where = i.folder or (", ".join(i.names) if i.names else None)
    extra = f" ({where})" if where else f" (seed {i.seed})" if i.seed is not None else ""
    lines = [f"- {i.kind}{extra}: {i.count} images; {i.note}"]
    p = i.preprocess
    if p is not None:
        zeros = "; other inputs fed zeros: " + ", ".join(
            f"`{k}` {z.dtype}{z.shape}" for k, z in p.zero_inputs.items()) if p.zero_inputs else ""
        lines.append(f"- input `{p.name}` [{p.channels}, {p.height}, {p.width}]: resize "
                     f"{p.resize}, mean {p.mean}, std {p.std}{zeros}")
        if p.origin:
            lines.append("- where each came from: " + ", ".join(
                f"{k.replace('_', ' ')} {v}" for k, v in sorted(p.origin.items())))
    return [*lines, ""]


def _stat_row(label: str, s: Stats | None) -> list[Any]:
    if s is None:
        return [label, *(["not measured"] + [""] * (len(_STAT_COLS) - 1))]
    return [label] + [_cos(getattr(s, c)) if c.startswith("cosine") else getattr(s, c)
                      for c in _STAT_COLS]


def _parity(p: ParityInfo) -> list[str]:
    lines = _table(["tier", *_STAT_COLS], [_stat_row("export", p.export),
                                           _stat_row("engine", p.engine)])
    return lines + ([p.note, ""] if p.note else [])


def _fidelity(f: FidelityInfo) -> list[str]:
    return ["- " + ", ".join(f"{k} {_cos(v) if k.startswith('cosine') else _num(v)}"
                             for k, v in vars(f).items()), ""]


def _accuracy(a: AccuracyInfo) -> list[str]:
    ds = a.dataset
    lines = [f"- dataset: **{ds.name}** ({ds.source}), seed {ds.seed}; {ds.selection}",
             f"- split: train {a.n_train} / test {a.n_test} images, {a.n_classes} classes", ""]
    lines += _table(["model", "top-1 accuracy (%)"],
                    [["baseline", a.baseline_acc], ["compressed", a.compressed_acc]])
    return [*lines, f"- accuracy drop: **{_num(a.drop_points)}** points",
            f"- embedding cosine: mean {_cos(a.embedding_cosine_mean)}, min "
            f"{_cos(a.embedding_cosine_min)}", f"- classifier: {a.classifier}", ""]


def _dense(d: DenseInfo) -> list[str]:
    lines = [f"output: **{d.output}**, {d.n} images", ""]
    lines += _table(["metric", "mean", "min"], [
        ["Pearson correlation", d.pearson_mean, d.pearson_min],
        [f"IoU above the baseline's q{_num(d.threshold_quantile)} value", d.iou_mean, d.iou_min]])
    if 0 < len(d.pearson) <= _DENSE_ROWS_MAX and len(d.pearson) == len(d.iou):
        lines += _table(["image", "Pearson", "IoU"],
                        [[i, p, u] for i, (p, u) in enumerate(zip(d.pearson, d.iou, strict=True))])
    return lines


def _throughput(t: ThroughputInfo) -> list[str]:
    runners = {"baseline": t.baseline, "compressed": t.compressed, "eager": t.eager,
               "eager_compressed": t.eager_compressed}
    rows = [[name, r.batch, r.img_per_s, r.p50_ms, r.p95_ms, r.n]
            for name, r in runners.items() if r is not None]
    lines = _table(["runner", "batch", "img/s", "p50 ms", "p95 ms", "n"], rows)
    ci = t.speedup_ci
    median = (f"; the ratio of median latencies, for the record: {_num(t.speedup_median)}"
              if t.speedup_median is not None else "")
    return [*lines, f"- speedup: **{speedup_text(t)}** — {ci.statistic}, {ci.level:.0%} "
            f"bootstrap interval over {t.compressed.n} interleaved rounds ({ci.resamples} "
            f"resamples, seed {ci.seed}){median}",
            f"- efficiency: **{_num(t.efficiency)}** (speedup / FLOPs ratio)", f"- {t.method}", ""]


def _task(t: TaskInfo) -> list[str]:
    lines = [f"function `{t.function}` on {t.n} inputs (both engines' outputs)", ""]
    return lines + _table(["metric", "value"], [[k, v] for k, v in t.metrics.items()])


_CAPTION_ROWS_MAX = 32


def _zero_shot(z: ZeroShotInfo) -> list[str]:
    lines = [f"compressed vision engine + text engine (`{z.text_engine}`, from "
             f"`{z.text_graph}`) vs the eager uncompressed CLIPModel: {z.n_images} images × "
             f"{z.n_captions} captions ({z.captions_from} captions, {z.text_length} tokens "
             f"each; {z.captions_truncated} cut to fit)", ""]
    lines += _table(["metric", "value"], [
        ["image top-1 agreement (top caption per image)", z.image_top1_agreement],
        ["caption top-1 agreement (top image per caption)",
         z.caption_top1_agreement if z.caption_top1_agreement is not None
         else "— (fewer than 2 images)"],
        ["image_embeds cosine, mean", _cos(z.image_cosine_mean)],
        ["image_embeds cosine, min", _cos(z.image_cosine_min)]])
    lines += ["text engine parity (text_embeds vs eager):", ""]
    lines += _table(["tier", *_STAT_COLS], [_stat_row("text", z.text_parity)])
    rows = [[i, z.captions[e] if e < len(z.captions) else e,
             z.captions[g] if g < len(z.captions) else g, "" if e == g else "differs"]
            for i, (e, g) in enumerate(zip(z.top_caption_engine, z.top_caption_eager,
                                           strict=True))][:_CAPTION_ROWS_MAX]
    lines += _table(["image", "top caption (engines)", "top caption (eager)", ""], rows)
    return lines


_LINT_ROWS_MAX = 40


def _trt_lint(t: TrtLintInfo) -> list[str]:
    lines = [f"model.onnx against TensorRT 10's ONNX parser: **{t.errors} error(s)**, "
             f"{t.warnings} warning(s) (`vtc lint-trt model.onnx`)", ""]
    rows = [[f.severity, f"`{f.node}`", f.op, f.problem, f.fix]
            for f in t.findings[:_LINT_ROWS_MAX]]
    more = len(t.findings) - len(rows)
    return lines + (_table(["severity", "node", "op", "problem", "fix"], rows) if rows else []) \
        + ([f"({more} more in report.json)", ""] if more > 0 else [])


def _gates(gates: list[Gate]) -> list[str]:
    return [f"- `{format_gate(g)}`" for g in gates] + ([""] if gates else ["no gates", ""])


def _skipped(why: dict[str, str]) -> list[str]:
    return [f"- `{g}`: {w}" for g, w in why.items()] + [""]


# the method-neutral top-level keys of a recipe (`vtc.recipe.RecipeBase`, aliases);
# any other key is a method's section, shown only when the recipe uses that method
RECIPE_KEYS = ("name", "description", "method", "unmerge", "tokens_out", "export", "input",
               "backend", "validate", "gates", "check", "generate")


def _recipe(recipe: dict[str, Any]) -> list[str]:
    """The recipe as YAML: the method-neutral keys and the used methods' sections (a
    vision-language recipe's generate: section only when a cut outside the encoder ran)."""
    import yaml

    used = list(recipe.get("method") or [])
    order = [k for k in RECIPE_KEYS[:3] if k in recipe] + [m for m in used if m in recipe] + [
        k for k in RECIPE_KEYS[3:] if k in recipe and k != "generate"]
    keep = {k: recipe[k] for k in order}
    text = yaml.safe_dump(keep, sort_keys=False, allow_unicode=True, default_flow_style=None,
                          width=10_000)
    return ["```yaml", text.rstrip(), "```", ""]


def _results(r: Report) -> list[str]:
    """One table of the headline figures (details in the sections below)."""
    b, f, a, t = r.budget, r.fidelity, r.accuracy, r.throughput
    par = ", ".join(f"{tier} max abs diff {_num(s.max_abs_diff)}" for tier, s in
                    (("export", r.parity.export), ("engine", r.parity.engine)) if s is not None)
    basis = {"token": "per-token ", "pooled": "pooled-token "}.get(f.basis, "")
    top = "".join(f", {k.replace('_', ' ')} {_num(v)}" for k, v in
                  (("top1_agreement", f.top1_agreement), ("top5_agreement", f.top5_agreement))
                  if v is not None)
    rows = [["tokens", f"{b.tokens_in} → {b.tokens_out} ({' + '.join(b.methods) or 'none'}, "
             f"{len(b.layers)} blocks, {b.protected} protected)"],
            ["FLOPs", f"ratio **{_num(b.flops_ratio)}** ({_num(b.flops_base)} → "
             f"{_num(b.flops)} MACs/image)"],
            ["parity", par or "not measured (no eager model)"],
            ["fidelity", f"{basis}cosine mean {_cos(f.cosine_mean)}, min {_cos(f.cosine_min)}"
             f"{top} ({output_kind(f, r.dense is not None)} output `{r.output}`, {f.n} "
             f"{r.inputs.kind} inputs)"],
            ["accuracy", f"{_num(a.baseline_acc)} % → {_num(a.compressed_acc)} % (drop "
             f"{_num(a.drop_points)} pt, {a.dataset.name} linear probe)" if a is not None
             else "not measured (no validate.dataset)"],
            ["speed", f"**{speedup_text(t)}** (paired, {t.speedup_ci.level:.0%} interval, "
             f"{t.compressed.n} rounds, batch {t.batch}); {_num(t.baseline_ips)} → "
             f"{_num(t.compressed_ips)} img/s (medians); efficiency {_num(t.efficiency)}"
             if t is not None else "not measured (--no-bench)"]]
    extra = [("dense", r.dense, lambda d: f"Pearson {_num(d.pearson_mean)}, IoU "
              f"{_num(d.iou_mean)}"),
             ("task", r.task, lambda k: ", ".join(f"{m} {_num(v)}" for m, v in
                                                  k.metrics.items())),
             ("zero-shot", r.zero_shot, lambda z: f"image top-1 agreement "
              f"{_num(z.image_top1_agreement)}"),
             ("deployed", r.deployment, lambda d: f"{d.precision}: cosine mean "
              f"{_cos(d.cosine_mean)}"),
             ("TensorRT lint", r.trt_lint, lambda x: f"{x.errors} error(s), "
              f"{x.warnings} warning(s)")]
    rows += [[name, render(v)] for name, v, render in extra if v is not None]
    return _table(["result", "value"], rows)


def _verdict(r: Report) -> list[str]:
    failed = [g.name for g in r.gates if not g.passed]
    n_ok = len(r.gates) - len(failed)
    parts = ([f"{len(failed)} failed ({', '.join(failed)})"] if failed else []) + \
        [f"{n_ok} passed"] + ([f"{len(r.gates_skipped)} skipped"] if r.gates_skipped else [])
    lines = [f"**{'PASS' if r.passed else 'FAIL'}** — gates: {', '.join(parts)}. Output "
             f"`{r.output}`, {r.elapsed_s:.1f} s, vtc {r.vtc_version}, report schema "
             f"{r.schema_version}.", ""]
    p = r.payoff
    if p is not None:
        lines += [f"**{p.message[0].upper()}{p.message[1:]}.**", ""]
        if p.suggestion is not None:
            lines += [f"Try `{p.suggestion}` (FLOPs ratio {_num(p.suggestion_flops_ratio)}, "
                      f"now {_num(r.budget.flops_ratio)}): a suggestion from {p.basis}.", ""]
        elif p.verdict != "pays":
            lines += [f"No budget suggested: {p.basis}.", ""]
    return lines


# field → (title, renderer); the order of the page after the results table
SECTIONS: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "gates": ("Gates", _gates),
    "gates_skipped_why": ("Gates skipped", _skipped),
    "budget": ("Token budget", _budget),
    "parity": ("Parity", _parity),
    "fidelity": ("Fidelity", _fidelity),
    "accuracy": ("Accuracy (linear probe)", _accuracy),
    "throughput": ("Throughput", _throughput),
    "dense": ("Dense output fidelity", _dense),
    "task": ("Task metric (validate.task)", _task),
    "zero_shot": ("Zero-shot agreement (image–text)", _zero_shot),
    "deployment": ("Deployed engine vs reference engine", _deployment),
    "trt_lint": ("TensorRT lint", _trt_lint),
    "graph": ("Graph rewrite", _graph),
    "engine": ("Engine", _engine),
    "fusions": ("ORT fusions", _fusions),
    "inputs": ("Inputs", _inputs),
    "machine": ("Machine", _machine),
    "source": ("Source", _source),
    "recipe": ("Recipe (the sections used)", _recipe),
}
# fields shown in the header lines (gates_skipped: the names of gates_skipped_why)
SUMMARY = ("passed", "output", "elapsed_s", "vtc_version", "schema_version", "payoff",
           "gates_skipped")


def render_markdown(report: Report) -> str:
    """The human-readable page of a report: verdict, results, gates, details, recipe."""
    lines = [f"# vtc report: {'PASS' if report.passed else 'FAIL'}", "", *_verdict(report),
             "## Results", "", *_results(report)]
    for key, (title, render) in SECTIONS.items():
        value = getattr(report, key)
        if key == "gates_skipped_why" and not value and report.gates_skipped:
            value = dict.fromkeys(report.gates_skipped, "not measurable in this run")
        if value is None or value == {}:  # the results table says what was not measured
            continue
        lines += [f"## {title}", "", *render(value)]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out_dir: Path, report: Report) -> tuple[Path, Path]:
    """Write `out_dir/report.json` (sorted keys, indent 2) and `out_dir/report.md` (the
    page of that JSON), each atomically. Returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomic(json_path, text)
    # rendered from what report.json holds, so `vtc report show` on the JSON gives this page
    write_atomic(md_path, render_markdown(Report.from_dict(json.loads(text))))
    return json_path, md_path
