"""Command-line entry points: `vtc-export` and `vtc` (export, inspect, recipes, methods,
demo, sweep, zoo, data, check, report, lint-trt). One module per command group; every command
body runs in `vtc.errors.guard`, which owns the exit codes (0 success, 1 a gate failed, 2 bad
input, 3 internal error, 130 interrupted)."""

from __future__ import annotations

from pathlib import Path

import click

from vtc import methods
from vtc.cli.check import check, report
from vtc.cli.data import data
from vtc.cli.export import demo, export_cmd, export_main
from vtc.cli.generate import generate
from vtc.cli.lint import lint_trt
from vtc.cli.sweep import sweep
from vtc.cli.zoo import zoo
from vtc.errors import guard
from vtc.passes.graph import find_blocks, mlp_width
from vtc.passes.model_io import load
from vtc.recipe import RecipeError, load_recipe, shipped

__all__ = ["export_main", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vtc")
def main() -> None:
    """vtc: static-budget visual token compression for exported vision models.

    \b
    vtc export SOURCE --recipe tome-r16 --out out/   (same as vtc-export)
    vtc inspect model.onnx                           blocks and token counts
    vtc lint-trt model.onnx                          TensorRT 10 parser limits
    vtc recipes                                      the shipped recipes
    vtc methods                                      the reduction methods
    vtc sweep SOURCE --recipe tome --values r=0,8,16 --out out/sweep
    vtc check out/new --baseline baselines/model     regression check for CI
    vtc report show out/new                          report.md in the terminal
    vtc demo --out out/demo                          the main job on a built-in model

    \b
    Exit codes: 0 success, 1 a recipe gate failed, 2 a usage or input error,
    3 an internal error (traceback written to a file it names), 130 interrupted.
    """


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="value for a symbolic batch dimension")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="value for symbolic height and width (as optimum-cli exports write them)")
def inspect(model: Path, batch: int, image_size: int | None) -> None:
    """Print the transformer blocks found in MODEL.onnx and the tokens entering each.

    \b
    Examples:
      vtc inspect out/model.onnx
      vtc inspect optimum/model.onnx --batch 8 --image-size 224
    """

    def _run() -> int:
        if not model.is_file():
            raise RecipeError(f"{model}: no such file; give an .onnx file")
        m = load(model, batch, image_size)
        blocks = find_blocks(m)
        click.echo(f"{model}: {len(blocks)} transformer blocks")
        click.echo(f"{'block':>5} {'tokens':>7} {'heads':>5} {'width':>6} {'mlp':>6}  softmax")
        for b in blocks:
            click.echo(f"{b.index:>5} {b.tokens:>7} {b.heads:>5} {b.width:>6} "
                       f"{mlp_width(b):>6}  {b.softmax.name}")
        return 0

    guard(_run)


@main.command()
def recipes() -> None:
    """List the shipped recipes (give one to --recipe by name).

    \b
    Examples:
      vtc recipes
      vtc-export SOURCE --recipe pitome-r16 --out out/
    """
    def _run() -> int:
        for name in sorted(shipped()):
            rec = load_recipe(name)
            click.echo(f"{name:<18} {'+'.join(rec.method) or 'none':<12} {rec.description}")
        return 0

    guard(_run)


@main.command("methods")
def methods_cmd() -> None:
    """List the reduction methods a recipe can name (`method:`), with their settings.

    \b
    Example:
      vtc methods
    """
    def _run() -> int:
        for name, m in sorted(methods.methods().items()):
            fields = ", ".join(f"{k}={v.default!r}" if v.default is not None or not v.is_required()
                               else k for k, v in m.config.model_fields.items())
            click.echo(f"{name:<8} {m.summary}")
            click.echo(f"{'':<8} {name}: {fields}")
        return 0

    guard(_run)


main.add_command(export_cmd)
main.add_command(demo)
main.add_command(sweep)
main.add_command(zoo)
main.add_command(data)
main.add_command(check)
main.add_command(report)
main.add_command(lint_trt)
main.add_command(generate)
