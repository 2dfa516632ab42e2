"""`vtc sweep`: one full pipeline run per budget value, and the accuracy–speed curve.

    vtc sweep SOURCE --recipe tome --values r=0,4,8,12,16,20 --out out/sweep
    vtc sweep SOURCE --recipe tome --recipe pitome --values r=0,4,8 --out out/cmp
    vtc sweep LLAVA_DIR --recipe llava-fastv --values fastv.keep=0.25,0.5,0.75 --out out/v

A vision-language checkpoint sweeps its cuts the same way: each point is a VLM bundle,
its speed the decoder's prefill speed-up over the uncut bundle (1 / prefill ratio, the
paired estimate of its report's interleaved rounds) and its quality the first-step
logits cosine against the uncut model (`vtc.sweep_plot`).

Each --recipe is one *series* (a curve); every value runs in every series and
becomes a recipe (the series' base recipe, the --set overrides, then KEY=value,
the key resolved per series: `r` → tome.r in one, pitome.r in the other). All
of them are validated, and their budgets resolved against the model, before
anything runs. Each point is a complete bundle under OUT/runs/<key>=<value>/
(one series) or OUT/runs/<series>/<key>=<value>/ (several); OUT/sweep.json
holds the metrics of every point and which of them are on its series' Pareto
front (measured speed-up vs quality, one front per series), OUT/sweep.md a
table and OUT/sweep.png the curves (see `vtc.sweep_plot`). Quality is one
metric for all series, so the curves compare.

Like a bundle, the sweep is built in a temporary directory beside OUT and
renamed into place at the end: an interrupted or failed sweep leaves no
half-written OUT. Sweeps do not gate: every point's gate verdict is recorded,
none decides the exit code.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

import vtc
from vtc import methods
from vtc.budget import BudgetError, Geometry
from vtc.errors import InputError
from vtc.output import building, check_out, publish
from vtc.pipeline import Options, check_source_spec, protected_paths, run
from vtc.recipe import Recipe, RecipeError, load_recipe, parse_value
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
from vtc.vlm.families import is_vlm

__all__ = ["Series", "SweepError", "pareto_front", "plan", "plan_series", "run_sweep"]


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
    series: str | None = None  # the series' name when the sweep has several

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,+\-\[\]]", "_", self.label)

    @property
    def title(self) -> str:
        """`r=8`, or `pitome r=8` in a sweep of several series (progress lines)."""
        return f"{self.series} {self.label}" if self.series else self.label

    @property
    def where(self) -> str:
        """The point as error messages name it: `r=8` or `series pitome, r=8`."""
        return f"series {self.series}, {self.label}" if self.series else self.label


@dataclass(frozen=True)
class Series:
    """One curve of the sweep: a recipe as given and its planned points."""

    name: str  # a safe name of the recipe as given (`tome`, `pitome`): its run directory
    given: str  # the --recipe argument
    base: Recipe  # the base recipe with the --set overrides
    key: str  # the full dotted key in this series (tome.r, pitome.r)
    points: list[Planned]


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
            return value, parse_value(value)
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


def series_name(given: str) -> str:
    """A safe directory name for a --recipe argument: `tome` → tome, `cfg/my.yaml` → my."""
    path = Path(given)
    text = path.stem if path.suffix in (".yaml", ".yml") else given
    name = re.sub(r"[^A-Za-z0-9._+\-]", "_", text).strip(".")
    return name or "recipe"


def plan_series(recipes: str | Sequence[str], key: str, values: Sequence[Any],
                overrides: Sequence[str] = ()) -> list[Series]:
    """`plan` for every recipe (one series each; none → tome). With several series, an
    error names the series, and two recipes with the same name are an error."""
    given = [recipes] if isinstance(recipes, str) else list(recipes) or ["tome"]
    names: dict[str, str] = {}
    for g in given:
        name = series_name(g)
        if name in names:
            raise SweepError(f"--recipe {g}: two series named {name!r} (--recipe {names[name]} "
                             f"and --recipe {g}); give each recipe once")
        names[name] = g
    if len(given) == 1:
        base, full, points = plan(given[0], key, values, overrides)
        return [Series(series_name(given[0]), given[0], base, full, points)]
    out = []
    for name, g in names.items():
        try:
            base, full, points = plan(g, key, values, overrides)
        except (SweepError, RecipeError) as exc:
            raise SweepError(f"series {name}: {exc}") from exc
        out.append(Series(name, g, base, full, [replace(p, series=name) for p in points]))
    return out


def _check_budgets(source: str, points: list[Planned], batch: int | None, allow_pickle: bool,
                   protected: int | None, log: Callable[[str], None]) -> None:
    """Resolve every point's budget against the model, so an impossible value fails first.
    The model is loaded once per image size (the load stage of the pipeline)."""
    src = resolve(source)
    if is_vlm(src.model_type):
        _check_cuts(src, points, log)
        return
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
            raise SweepError(f"{p.where}: {exc}") from exc


def _check_cuts(src: Any, points: list[Planned], log: Callable[[str], None]) -> None:
    """A vision-language checkpoint: every point's cuts planned against its config (the
    weights are not loaded)."""
    from transformers import AutoConfig

    from vtc.vlm import families
    from vtc.vlm import plan as vlm_plan

    fam = families.get(src.model_type or "")
    try:
        cfg = AutoConfig.from_pretrained(str(src.path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SweepError(f"{src.spec}: config.json cannot be read ({type(exc).__name__})") \
            from None
    log(f"checking {len(points)} cut plans against {src.spec} ({fam.name})")
    for p in points:
        try:  # the geometry per point: a family may size it by the recipe (an image size)
            vlm_plan.plan(p.recipe, fam.check_config(cfg, src.spec, p.recipe))
        except (BudgetError, InputError) as exc:
            raise SweepError(f"{p.where}: {exc}") from exc


def command_line(source: str, recipes: str | Sequence[str], key: str, values: Sequence[Any],
                 out: Path, batch: int | None = None, images: Path | None = None,
                 overrides: Sequence[str] = (), force: bool = False,
                 allow_pickle: bool = False, protected: int | None = None) -> str:
    """The `vtc sweep` command that reproduces a sweep (every --recipe, in order)."""
    vals = ",".join(_value_text(v)[0] for v in values)
    args = ["vtc", "sweep", source]
    for r in [recipes] if isinstance(recipes, str) else recipes:
        args += ["--recipe", r]
    args += ["--values", f"{key}={vals}", "--out", str(out)]
    args += ["--batch", str(batch)] if batch is not None else []
    args += ["--images", str(images)] if images is not None else []
    for o in overrides:
        args += ["--set", o]
    args += ["--protected", str(protected)] if protected is not None else []
    args += ["--force"] if force else []
    args += ["--allow-pickle"] if allow_pickle else []
    return shlex.join(args)


# ---- running ---------------------------------------------------------------------------


def run_sweep(source: str, recipes: str | Sequence[str], key: str, values: Sequence[Any],
              out: Path, batch: int | None = None, images: Path | None = None,
              overrides: Sequence[str] = (), force: bool = False, allow_pickle: bool = False,
              protected: int | None = None,
              log: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run the pipeline once per value of `key` in every series (one per recipe of
    `recipes`, a name or a list of them) and write OUT/sweep.{json,md,png} and
    OUT/runs/<key>=<value>/ (one series) or OUT/runs/<series>/<key>=<value>/; returns
    the sweep.json content.

    `values` are YAML strings (as on the command line) or Python values. Raises SweepError
    (or the pipeline's own input errors) before anything is written when a value or an
    input is bad; a point whose pipeline fails on an input error aborts the sweep with a
    SweepError naming the value (and its series)."""
    out = Path(out)
    check_source_spec(source)
    series = plan_series(recipes, key, values, overrides)
    planned = [p for s in series for p in s.points]
    check_out(out, force, protected_paths(source))
    _check_budgets(source, planned, batch, allow_pickle, protected, log)
    t0, reports = time.perf_counter(), []
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in series}
    with building(out, force, label="sweep-tmp") as tmp:
        (tmp / "runs").mkdir()
        for i, p in enumerate(planned, 1):
            head = f"[{i}/{len(planned)}] {p.title}"
            log(f"{head}: running the pipeline")
            run_dir = f"{p.series}/{p.dirname}" if p.series else p.dirname
            opts = Options(source=source, recipe=p.recipe, out=tmp / "runs" / run_dir,
                           batch=batch or p.recipe.export.batch, images=images,
                           allow_pickle=allow_pickle, protected=protected, bench=True,
                           log=lambda msg: log(f"    {msg}"))
            try:
                report = run(opts).report
            except InputError as exc:
                raise SweepError(f"{p.where}: {exc}") from exc
            reports.append(report.to_dict())
            pt = point_metrics(p.label, p.value, reports[-1], f"runs/{run_dir}")
            results[p.series or series[0].name].append({"series": p.series or series[0].name,
                                                        **pt})
            log(f"{head}: {result_line(pt)}")
        quality = set_quality([pt for pts in results.values() for pt in pts])
        for pts in results.values():  # one front per series: each curve has its own
            for pt, on in zip(pts, pareto_front(pts), strict=True):
                pt["pareto"] = on
        first, fields = reports[0], _series_fields(series, results, key, overrides)
        sweep: dict[str, Any] = {
            "vtc_version": vtc.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(source, [s.given for s in series], key, values, out, batch,
                                    images, overrides, force, allow_pickle, protected),
            "source": {**first["source"], "name": _model_name(source)},
            "base_recipe": fields["base_recipe"], "key": fields["key"], "key_given": key,
            "values": [p.value for p in series[0].points], "batch": batch,
            "kind": first.get("kind", "encoder"),
            "inputs": first.get("inputs") or _prompts_inputs(first),
            "dataset": dataset_name(results[series[0].name],
                                    first.get("inputs") or _prompts_inputs(first)),
            "quality": quality, "engine": first["engine"], "machine": machine_info(),
            **fields, "elapsed_s": round(time.perf_counter() - t0, 2),
        }
        (tmp / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
        (tmp / "sweep.md").write_text(render_markdown(sweep))
        write_plot(sweep, tmp / "sweep.png")
        publish(tmp, out, replace=force)
    return sweep


def _series_fields(series: list[Series], results: dict[str, list[dict[str, Any]]], key: str,
                   overrides: Sequence[str]) -> dict[str, Any]:
    """sweep.json's `base_recipe`, `key`, `points`, `pareto` and `series`. With one series
    they are that series'; with several, `base_recipe` is null, `key` the full key they
    share (else the key as given), `points` every point (each names its series) and
    `pareto` every series' front as `<series>/<label>`."""
    entries = [{
        "name": s.name,
        "recipe": {"name": s.base.name, "given": s.given, "overrides": list(overrides),
                   "recipe": s.base.to_dict()},
        "key": s.key, "run_dir": "runs" if len(series) == 1 else f"runs/{s.name}",
        "points": results[s.name],
        "pareto": [pt["label"] for pt in results[s.name] if pt["pareto"]],
    } for s in series]
    if len(series) == 1:
        (e,) = entries
        return {"base_recipe": e["recipe"], "key": e["key"], "points": e["points"],
                "pareto": e["pareto"], "series": entries}
    keys = {s.key for s in series}
    return {"base_recipe": None, "key": keys.pop() if len(keys) == 1 else key,
            "points": [pt for e in entries for pt in e["points"]],
            "pareto": [f"{e['name']}/{label}" for e in entries for label in e["pareto"]],
            "series": entries}


def _prompts_inputs(report: dict[str, Any]) -> dict[str, Any]:
    """What a vision-language point was validated on (its report has no `inputs`)."""
    gen = (report.get("parity") or {}).get("generation") or {}
    return {"kind": "prompts", "count": gen.get("prompts"),
            "max_new_tokens": gen.get("max_new_tokens")}


def _model_name(source: str) -> str:
    path = Path(source)
    return path.stem if path.suffix == ".onnx" else path.name if path.exists() else source
