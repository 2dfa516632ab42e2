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

import yaml

import vtc
from vtc import methods
from vtc.budget import BudgetError, Geometry
from vtc.errors import InputError
from vtc.pipeline import Options, check_out_dir, publish, run
from vtc.recipe import Recipe, RecipeError, load_recipe
from vtc.source import resolve
from vtc.stages.load import load
from vtc.sweep_plot import (
    dataset_name,
    machine_info,
    pareto_front,
    point_metrics,
    render_markdown,
    result_line,
    set_quality,
    write_plot,
)

__all__ = ["SweepError", "pareto_front", "plan", "run_sweep"]


class SweepError(InputError):
    """A sweep that cannot run as asked (an input error: exit 2)."""


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
    """A method name → the shipped recipe it starts from (`tome` → tome-r8, `pitome` →
    pitome-r8, `evit` → evit-keep70); any other recipe name or path as is."""
    registered = methods.methods()
    return registered[name].recipe if name in registered and registered[name].recipe else name


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


def _fields(method: str) -> tuple[str, ...]:
    return tuple(methods.get(method).config.model_fields)


def resolve_key(key: str, recipe_methods: Sequence[str]) -> str:
    """A field of the recipe's method section (`r` → `tome.r`) or a full dotted path."""
    if "." in key:
        return key
    owners = [m for m in recipe_methods if key in _fields(m)]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if len(owners) > 1:
        raise SweepError(f"--values {key}: {' and '.join(owners)} both have {key!r}; give a "
                         f"full dotted key such as {owners[0]}.{key}")
    if not recipe_methods:
        raise SweepError(f"--values {key}: the recipe reduces nothing, so it has no {key!r} "
                         "setting; give a full dotted key such as tome.r")
    other = [m for m in methods.names() if key in _fields(m) and m not in recipe_methods]
    hint = f" (it is a {other[0]} setting: use --recipe {other[0]})" if other else ""
    mine = "; ".join(f"{m} has {', '.join(_fields(m))}" for m in recipe_methods)
    raise SweepError(f"--values {key}: not a setting of {', '.join(recipe_methods)}{hint}; "
                     f"{mine}, or give a full dotted key")


def _exclusive(full: str) -> str | None:
    """The setting cleared when `full` (e.g. tome.r) is swept (tome.flops_ratio)."""
    section, _, key = full.partition(".")
    if section not in methods.names():
        return None
    other = methods.get(section).exclusive.get(key)
    return f"{section}.{other}" if other else None


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
    cleared = _exclusive(full)
    extra = [f"{cleared}=null"] if cleared else []
    points: list[Planned] = []
    for raw in values:
        text, parsed = _value_text(raw)
        label = f"{key}={text}"
        try:
            rec = load_recipe(name, [*overrides, *extra, f"{full}={text}"])
        except RecipeError as exc:
            raise SweepError(f"{label}: {exc}") from exc
        section = full.split(".", 1)[0]
        if section in methods.names() and section not in rec.method:
            raise SweepError(f"{label}: {full} has no effect on a {'+'.join(rec.method) or 'none'}"
                             f" recipe ({rec.name}); use --recipe {section}")
        if any(p.value == parsed for p in points):
            raise SweepError(f"--values: {label} is given twice")
        points.append(Planned(label, parsed, rec))
    if len({p.dirname for p in points}) != len(points):
        raise SweepError("--values: two values map to the same run directory name")
    return base, full, points


def _check_budgets(source: str, points: list[Planned], batch: int | None, allow_pickle: bool,
                   protected: int | None, log: Callable[[str], None]) -> None:
    """Resolve every point's budget against the model, so an impossible value fails first.
    The model is loaded once per image size (the load stage of the pipeline)."""
    src = resolve(source)
    geos: dict[int | None, Geometry] = {}
    log(f"checking {len(points)} budgets against {source}")
    for p in points:
        size = p.recipe.export.image_size
        if size not in geos:
            b = batch or p.recipe.export.batch
            geos[size] = load(src, p.recipe, b, batch is not None, protected,
                              allow_pickle).geometry
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
            except InputError as exc:
                raise SweepError(f"{p.label}: {exc}") from exc
            reports.append(report.to_dict())
            results.append(point_metrics(p.label, p.value, reports[-1], f"runs/{p.dirname}"))
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
            "batch": batch, "inputs": first["inputs"],
            "dataset": dataset_name(results, first["inputs"]),
            "quality": quality, "engine": first["engine"], "machine": machine_info(),
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
