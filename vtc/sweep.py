"""`vtc sweep`: one full pipeline run per budget value, and the accuracy–speed curve.

    vtc sweep SOURCE --recipe tome --values r=0,4,8,12,16,20 --out out/sweep

Every value becomes a recipe (the base recipe, the --set overrides, then
KEY=value); all of them are validated, and their budgets resolved against the
model, before anything runs. Each point is a complete bundle under
OUT/runs/<key>=<value>/; OUT/sweep.json holds the metrics of every point and
which of them are on the Pareto front (measured speed-up vs quality),
OUT/sweep.md a table and OUT/sweep.png the curve (see `vtc.sweep_plot`).

Like a bundle, the sweep is built in a temporary directory beside OUT and
renamed into place at the end: an interrupted or failed sweep leaves no
half-written OUT. Sweeps do not gate: every point's gate verdict is recorded,
none decides the exit code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

import vtc
from vtc.recipe import EViTCfg, Recipe, RecipeError, ToMeCfg, load_recipe
from vtc.sweep_plot import (
    dataset_name,
    machine_info,
    pareto_front,
    point_metrics,
    result_line,
    set_quality,
)

__all__ = ["SweepError", "pareto_front", "plan", "run_sweep", "sweep"]

# A bare method name picks the shipped recipe a sweep starts from.
METHOD_RECIPES = {"tome": "tome-r8", "evit": "evit-keep70"}
_SECTIONS: dict[str, tuple[str, ...]] = {
    "tome": tuple(ToMeCfg.model_fields), "evit": tuple(EViTCfg.model_fields)}
# Budget fields of which a recipe may set only one: sweeping one clears the other.
_EXCLUSIVE = {"tome.r": "tome.flops_ratio", "tome.flops_ratio": "tome.r",
              "evit.keep_rate": "evit.keep", "evit.keep": "evit.keep_rate"}


class SweepError(ValueError):
    """A sweep that cannot run as asked (an input error: exit 2)."""


def _errors() -> tuple[type[BaseException], ...]:
    """Everything that exits 2: sweep errors and the pipeline's input errors."""
    from vtc.cli import _input_errors

    return (SweepError, *_input_errors())


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Planned:
    """One point of the sweep before it runs."""

    label: str  # "r=8", as printed and used for the run directory
    value: Any  # the parsed value
    recipe: Recipe

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", self.label)


# ---- parsing and planning ------------------------------------------------------------


def base_recipe_name(name: str) -> str:
    """`tome` → tome-r8, `evit` → evit-keep70; any other recipe name or path as is."""
    return METHOD_RECIPES.get(name, name)


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so per-block lists survive: `[2,2,2],[4,4,4]`."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def parse_values(spec: str) -> tuple[str, list[str]]:
    """`r=0,4,8` → ("r", ["0", "4", "8"]) (values stay YAML text until planned)."""
    key, sep, rest = spec.partition("=")
    values = _split_values(rest) if sep else []
    if not sep or not key.strip() or not values or any(not v for v in values):
        raise SweepError(f"--values {spec!r}: expected KEY=v1,v2,... "
                         "e.g. --values r=0,4,8 or --values keep_rate=1.0,0.7,0.5")
    return key.strip(), values


def resolve_key(key: str, method: str) -> str:
    """A field of the method's section (`r` → `tome.r`) or a full dotted path."""
    if "." in key:
        return key
    fields = _SECTIONS.get(method)
    if fields is None:
        raise SweepError(f"--values {key}: the recipe's method is {method!r}, which has no "
                         f"{key!r} setting; give a full dotted key such as tome.r")
    if key not in fields:
        other = [m for m, f in _SECTIONS.items() if key in f and m != method]
        hint = f" (it is an {other[0]} setting: use --recipe {other[0]})" if other else ""
        raise SweepError(f"--values {key}: not a {method} setting{hint}; "
                         f"{method} has {', '.join(fields)}, or give a full dotted key")
    return f"{method}.{key}"


def _value_text(value: Any) -> tuple[str, Any]:
    """(text for --set and labels, parsed value); strings are YAML, as on the command line."""
    if isinstance(value, str):
        try:
            return value, yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SweepError(f"value {value!r} is not valid YAML ({exc})") from exc
    return json.dumps(value), value


def plan(base_recipe: str, key: str, values: Sequence[Any],
         overrides: Sequence[str] = ()) -> tuple[Recipe, str, list[Planned]]:
    """Validate the base recipe and one recipe per value (nothing runs, nothing is written).

    Returns (base recipe with the overrides, the full dotted key, the planned points)."""
    name = base_recipe_name(base_recipe)
    base = load_recipe(name, list(overrides))
    full = resolve_key(key, base.method)
    if not values:
        raise SweepError("--values: give at least one value")
    extra = [f"{_EXCLUSIVE[full]}=null"] if full in _EXCLUSIVE else []
    points: list[Planned] = []
    for raw in values:
        text, parsed = _value_text(raw)
        label = f"{key}={text}"
        try:
            rec = load_recipe(name, [*overrides, *extra, f"{full}={text}"])
        except RecipeError as exc:
            raise SweepError(f"{label}: {exc}") from exc
        section = full.split(".", 1)[0]
        if section in _SECTIONS and rec.method != section:
            raise SweepError(f"{label}: {full} has no effect on a {rec.method!r} recipe "
                             f"({rec.name}); use --recipe {section}")
        if any(p.value == parsed for p in points):
            raise SweepError(f"--values: {label} is given twice")
        points.append(Planned(label, parsed, rec))
    if len({p.dirname for p in points}) != len(points):
        raise SweepError("--values: two values map to the same run directory name")
    return base, full, points


def _check_budgets(source: str, points: list[Planned], batch: int | None, allow_pickle: bool,
                   protected: int | None, log: Callable[[str], None]) -> None:
    """Resolve every point's budget against the model, so an impossible value fails first."""
    from vtc.budget import BudgetError, Geometry
    from vtc.source import resolve

    src = resolve(source)
    geos: dict[int | None, Geometry] = {}
    model: Any = None
    log(f"checking {len(points)} budgets against {source}")
    for p in points:
        size = p.recipe.export.image_size
        if size not in geos:
            if src.kind == "hf":
                from vtc.exporter import get_family

                family = get_family(src.model_type or "")
                if model is None:
                    model = family.load(src.path, allow_pickle=allow_pickle)
                geos[size] = family.geometry(model, size or family.image_size(model))
            else:
                from vtc import passes
                from vtc.pipeline import onnx_geometry

                pinned = passes.load(src.path, batch or p.recipe.export.batch, size)
                geos[size] = onnx_geometry(pinned, protected)
        try:
            p.recipe.budget(geos[size])
        except BudgetError as exc:
            raise SweepError(f"{p.label}: {exc}") from exc


def command_line(source: str, base_recipe: str, key: str, values: Sequence[Any], out: Path,
                 batch: int | None = None, images: Path | None = None,
                 overrides: Sequence[str] = (), force: bool = False,
                 allow_pickle: bool = False, protected: int | None = None) -> str:
    """The `vtc sweep` command that reproduces a sweep."""
    vals = ",".join(_value_text(v)[0] for v in values)
    args = ["vtc", "sweep", source, "--recipe", base_recipe, "--values", f"{key}={vals}",
            "--out", str(out)]
    args += ["--batch", str(batch)] if batch is not None else []
    args += ["--images", str(images)] if images is not None else []
    for o in overrides:
        args += ["--set", o]
    args += ["--protected", str(protected)] if protected is not None else []
    args += ["--force"] if force else []
    args += ["--allow-pickle"] if allow_pickle else []
    return shlex.join(args)


# ---- running ---------------------------------------------------------------------------


def run_sweep(source: str, base_recipe: str, key: str, values: Sequence[Any], out: Path,
              batch: int | None = None, images: Path | None = None,
              overrides: Sequence[str] = (), force: bool = False, allow_pickle: bool = False,
              protected: int | None = None,
              log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run the pipeline once per value of `key` and write OUT/sweep.{json,md,png} and
    OUT/runs/<key>=<value>/; returns the sweep.json content.

    `values` are YAML strings (as on the command line) or Python values. Raises SweepError
    (or the pipeline's own input errors) before anything is written when a value or an
    input is bad; a point whose pipeline fails on an input error aborts the sweep with a
    SweepError naming the value."""
    from vtc.cli import _input_errors
    from vtc.pipeline import Options, check_out_dir, publish, run
    from vtc.sweep_plot import render_markdown, write_plot

    out = Path(out)
    base, full, points = plan(base_recipe, key, values, overrides)
    check_out_dir(out, force)
    _check_budgets(source, points, batch, allow_pickle, protected, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.sweep-tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "runs").mkdir(parents=True)
    t0, results, reports = time.perf_counter(), [], []
    try:
        for i, p in enumerate(points, 1):
            head = f"[{i}/{len(points)}] {p.label}"
            log(f"{head}: running the pipeline")
            opts = Options(source=source, recipe=p.recipe, out=tmp / "runs" / p.dirname,
                           batch=batch or p.recipe.export.batch, images=images,
                           allow_pickle=allow_pickle, protected=protected, bench=True,
                           log=lambda msg: log(f"    {msg}"))
            try:
                report = run(opts).report
            except _input_errors() as exc:
                raise SweepError(f"{p.label}: {exc}") from exc
            reports.append(report)
            results.append(point_metrics(p.label, p.value, report, f"runs/{p.dirname}"))
            log(f"{head}: {result_line(results[-1])}")
        quality = set_quality(results)
        for pt, on in zip(results, pareto_front(results), strict=True):
            pt["pareto"] = on
        first = reports[0]
        sweep: dict[str, Any] = {
            "vtc_version": vtc.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(source, base_recipe, key, values, out, batch, images,
                                    overrides, force, allow_pickle, protected),
            "source": {**first["source"], "name": _model_name(source)},
            "base_recipe": {"name": base.name, "given": base_recipe, "overrides": list(overrides),
                            "recipe": base.to_dict()},
            "key": full, "key_given": key, "values": [p.value for p in points],
            "batch": batch, "inputs": first.get("inputs"),
            "dataset": dataset_name(results, first.get("inputs") or {}),
            "quality": quality, "providers": first.get("providers"), "machine": machine_info(),
            "points": results, "pareto": [pt["label"] for pt in results if pt["pareto"]],
            "elapsed_s": round(time.perf_counter() - t0, 2),
        }
        (tmp / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
        (tmp / "sweep.md").write_text(render_markdown(sweep))
        write_plot(sweep, tmp / "sweep.png")
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sweep


def _model_name(source: str) -> str:
    path = Path(source)
    return path.stem if path.suffix == ".onnx" else path.name if path.exists() else source


# ---- command line ----------------------------------------------------------------------

SWEEP_HELP = """Run the pipeline once per budget value; plot quality against speed-up.

--recipe takes a method (tome → the tome-r8 recipe, evit → evit-keep70) or any
recipe name or YAML path. --values KEY=v1,v2,... names a field of the method's
section (r, flops_ratio, keep_rate, keep, ...) or a full dotted key; r=0 and
keep_rate=1.0 are the uncompressed point. Every value is validated, and its
budget resolved against the model, before anything runs.

\b
Examples:
  vtc sweep ./vit-base-patch16-224 --recipe tome --values r=0,4,8,12,16,20 --out out/sweep
  vtc sweep ./vit-base-patch16-224 --recipe evit --values keep_rate=1.0,0.9,0.7,0.5 \\
      --out out/evit-sweep --images ./val
  vtc sweep model.onnx --recipe tome --values flops_ratio=1.0,1.5,2.0 --out out/fr
  vtc sweep ./ckpt --recipe tome-r16 --values tome.r=8,16 --set validate.repeats=30 \\
      --batch 16 --out out/sweep --force

\b
Writes OUT/sweep.json (every point's tokens, FLOPs ratio, measured speed-up,
img/s, accuracy or fidelity, Pareto flag; the command; the machine),
OUT/sweep.md (a table), OUT/sweep.png (quality vs measured speed-up and vs
the analytic FLOPs ratio) and OUT/runs/KEY=VALUE/ (one full bundle each).
Sweeps do not gate: exit 0 when every point ran, 2 on a usage or input error
(nothing is written), 130 when interrupted (nothing is written).
"""


@click.command("sweep", help=SWEEP_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("--recipe", "-r", default="tome", show_default=True,
              help="tome, evit, or a recipe name (`vtc recipes`) or YAML path")
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
def sweep(source: str, recipe: str, values_spec: str, out: Path, batch: int | None,
          images: Path | None, overrides: tuple[str, ...], force: bool, allow_pickle: bool,
          protected: int | None) -> None:
    from vtc.cli import sigterm_as_interrupt

    sigterm_as_interrupt()
    try:
        key, values = parse_values(values_spec)
        result = run_sweep(source, recipe, key, values, out, batch=batch, images=images,
                           overrides=overrides, force=force, allow_pickle=allow_pickle,
                           protected=protected)
    except KeyboardInterrupt:
        click.echo("interrupted: no sweep was written", err=True)
        sys.exit(130)
    except _errors() as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    from vtc.sweep_plot import table

    click.echo("\n".join(table(result)))
    click.echo(f"\nwrote {out}/sweep.json, sweep.md, sweep.png and {len(result['points'])} "
               f"bundles under {out}/runs/")
