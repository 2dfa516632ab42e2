"""`vtc sweep`: the command; the sweep itself is `vtc.sweep.run_sweep`."""

from __future__ import annotations

from pathlib import Path

import click

from vtc.errors import guard

SWEEP_HELP = """Run the pipeline once per budget value; plot quality against speed-up.

--recipe takes a method (tome → the tome-r8 recipe, pitome → pitome-r8, evit →
evit-keep70) or any recipe name or YAML path. Repeat it to compare methods at the
same budgets: each recipe is one series (one curve), and every value runs in
every series. --values KEY=v1,v2,... names a field of the method's section (r,
flops_ratio, keep_rate, keep, ...), resolved per series (r → tome.r, pitome.r),
or a full dotted key; r=0 and keep_rate=1.0 are the uncompressed point. Every
value of every series is validated, and its budget resolved against the model,
before anything runs.

\b
Examples:
  vtc sweep ./vit-base-patch16-224 --recipe tome --values r=0,4,8,12,16,20 --out out/sweep
  vtc sweep ./vit-base-patch16-224 --recipe evit --values keep_rate=1.0,0.9,0.7,0.5 \\
      --out out/evit-sweep --images ./val
  vtc sweep model.onnx --recipe tome --values flops_ratio=1.0,1.5,2.0 --out out/fr
  vtc sweep ./ckpt --recipe tome-r16 --values tome.r=8,16 --set validate.repeats=30 \\
      --batch 16 --out out/sweep --force
  vtc sweep dinov2-small --recipe tome --recipe pitome --values r=0,4,8,12,16,20 \\
      --out out/cmp --set validate.dataset=fashion-mnist   # ToMe vs PiToMe
  vtc sweep ./llava-1.5-7b-hf --recipe llava-fastv --values fastv.keep=0.25,0.5,0.75 \\
      --out out/fastv --set generate.rounds=10   # a vision-language checkpoint

\b
Writes OUT/sweep.json (every point's tokens, FLOPs ratio, measured speed-up,
img/s, accuracy or fidelity, Pareto flag; the command; the machine),
OUT/sweep.md (a table), OUT/sweep.png (quality vs measured speed-up and vs
the analytic FLOPs ratio) and OUT/runs/KEY=VALUE/ (one full bundle each).
With several series: OUT/runs/SERIES/KEY=VALUE/, a series column in the
table, one curve and one Pareto front per series, and one quality metric for
all (accuracy if every point has one, else the embedding cosine).
A vision-language checkpoint (LLaVA) sweeps its cuts (visionzip, fastv, pyramid,
exit): each point is a VLM bundle, speed is the decoder's prefill speed-up over
the uncut bundle (1 / prefill ratio; the plot's top axis reads the ratio) and
quality the first-step logits cosine against the uncut model.
Sweeps do not gate: exit 0 when every point ran, 2 on a usage or input error
(nothing is written), 3 on an internal error (the traceback goes to a file the
message names; nothing is written), 130 when interrupted (nothing is written).
"""


@click.command("sweep", help=SWEEP_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("--recipe", "-r", "recipes", multiple=True, metavar="RECIPE",
              help="a method (tome, pitome, evit) or a recipe name (`vtc recipes`) or YAML "
              "path; repeat to compare series  [default: tome]")
@click.option("--values", "values_spec", required=True, metavar="KEY=V1,V2,...",
              help="the field to sweep and its values, e.g. r=0,4,8 or keep_rate=1.0,0.7")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="sweep directory (must be empty or absent unless --force)")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=None,
              help="static batch of the engines [default: the recipe's]")
@click.option("--images", type=click.Path(path_type=Path, exists=True, file_okay=False),
              default=None, help="folder of images for validation [default: synthetic]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe field for every point (repeatable)")
@click.option("--force", is_flag=True, help="replace a non-empty --out")
@click.option("--allow-pickle", is_flag=True,
              help="allow pytorch_model.bin checkpoints (torch.load weights_only=True)")
@click.option("--protected", type=click.IntRange(min=0), default=None,
              help="ONNX sources: leading tokens never merged [default: guessed]")
def sweep(source: str, recipes: tuple[str, ...], values_spec: str, out: Path, batch: int | None,
          images: Path | None, overrides: tuple[str, ...], force: bool, allow_pickle: bool,
          protected: int | None) -> None:
    def _run() -> int:
        from vtc.sweep import parse_values, run_sweep
        from vtc.sweep_plot import table

        key, values = parse_values(values_spec)
        result = run_sweep(source, list(recipes) or ["tome"], key, values, out, batch=batch,
                           images=images, overrides=overrides, force=force,
                           allow_pickle=allow_pickle, protected=protected)
        click.echo("\n".join(table(result)))
        n = len(result["series"])
        click.echo(f"\nwrote {out}/sweep.json, sweep.md, sweep.png and {len(result['points'])} "
                   f"bundles under {out}/runs/" + (f" ({n} series)" if n > 1 else ""))
        return 0

    guard(_run)
