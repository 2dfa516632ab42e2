"""`vtc inspect`, `vtc recipes`, `vtc methods`: what a model, the shipped recipes and the
registered methods hold."""

from __future__ import annotations

from pathlib import Path

import click

from vtc.errors import guard

__all__ = ["inspect", "methods_cmd", "recipes"]


@click.command()
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
        from vtc.passes.graph import find_blocks, mlp_width
        from vtc.passes.model_io import load
        from vtc.recipe import RecipeError

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


@click.command()
def recipes() -> None:
    """List the shipped recipes (give one to --recipe by name).

    \b
    Examples:
      vtc recipes
      vtc-export SOURCE --recipe pitome-r16 --out out/
    """
    def _run() -> int:
        from vtc.recipe import load_recipe, shipped

        for name in sorted(shipped()):
            rec = load_recipe(name)
            click.echo(f"{name:<18} {'+'.join(rec.method) or 'none':<12} {rec.description}")
        return 0

    guard(_run)


@click.command("methods")
def methods_cmd() -> None:
    """List the reduction methods a recipe can name (`method:`), with their settings.

    \b
    Example:
      vtc methods
    """
    def _run() -> int:
        from vtc import methods

        for name, m in sorted(methods.methods().items()):
            fields = ", ".join(f"{k}={v.default!r}" if v.default is not None or not v.is_required()
                               else k for k, v in m.config.model_fields.items())
            click.echo(f"{name:<8} {m.summary}")
            click.echo(f"{'':<8} {name}: {fields}")
        return 0

    guard(_run)
