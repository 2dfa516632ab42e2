"""Recipes: YAML files validated by pydantic (unknown keys are errors).

A recipe names one reduction method and its budget, how to export, which
backend to build, how to validate and which gates decide the exit code.
Shipped recipes live in `recipes/` inside the package; a path to any YAML
file works too. `--set a.b=value` overrides one field (value parsed as YAML).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vtc.budget import Budget, Geometry, evit_budget, no_budget, tome_budget


class RecipeError(ValueError):
    """A recipe that cannot be loaded or validated (an input error)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToMeCfg(_Strict):
    r: int | list[int] | None = None
    flops_ratio: float | None = None
    proportional_attention: bool = True
    # copy merged tokens back to the full grid before a consumer that needs it (dense heads)
    unmerge: Literal["auto", "always", "never"] = "auto"


class EViTCfg(_Strict):
    keep_rate: float | None = 0.7
    keep: int | None = None  # absolute k per pruning block (set keep_rate: null)
    layers: list[int] = Field(default_factory=lambda: [3, 6, 9])
    fuse: Literal["sum", "mean", "none"] = "sum"

    @field_validator("keep_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"keep_rate={v} is outside (0, 1]")
        return v


class ExportCfg(_Strict):
    opset: int = 18
    batch: int = 8
    image_size: int | None = None
    dynamic_batch: bool = False  # engines accept any batch; --batch is then the one timed


class BackendCfg(_Strict):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int | None = None


class ValidateCfg(_Strict):
    samples: int = 16
    warmup: int = 3
    repeats: int = 15
    min_time_s: float = 0.0
    eager_throughput: bool = True
    seed: int = 0
    dataset: str | None = None  # labelled dataset for a linear probe (`vtc data list`)
    # split sizes for the probe, at most what the dataset has (null: all of it)
    probe_train: int | None = 2000
    probe_test: int | None = 2000

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str | None) -> str | None:
        from vtc.data import names

        if v is not None and v not in names():
            raise ValueError(f"unknown dataset {v!r}; known datasets: {', '.join(names())}")
        return v


class Recipe(_Strict):
    name: str
    description: str = ""
    method: Literal["none", "tome", "evit"]
    tome: ToMeCfg = Field(default_factory=ToMeCfg)
    evit: EViTCfg = Field(default_factory=EViTCfg)
    export: ExportCfg = Field(default_factory=ExportCfg)
    backend: BackendCfg = Field(default_factory=BackendCfg)
    validate_: ValidateCfg = Field(default_factory=ValidateCfg, alias="validate")
    gates: dict[str, float] = Field(default_factory=dict)

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, v: dict[str, float]) -> dict[str, float]:
        from vtc.validate.gates import GATES

        unknown = sorted(set(v) - set(GATES))
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}; known gates: {', '.join(GATES)}")
        return v

    @model_validator(mode="after")
    def _probe_gates_need_a_dataset(self) -> Recipe:
        probe = [g for g in ("max_accuracy_drop", "min_embedding_cosine") if g in self.gates]
        if probe and self.validate_.dataset is None:
            raise ValueError(f"gate(s) {probe} need validate.dataset (e.g. fashion-mnist)")
        return self

    def budget(self, geo: Geometry) -> Budget:
        """Resolve the recipe's budget against a model geometry (BudgetError on misfit)."""
        if self.method == "tome":
            r = self.tome.r
            if r is None and self.tome.flops_ratio is None:
                r = 0
            return tome_budget(geo, r, self.tome.flops_ratio, self.tome.proportional_attention)
        if self.method == "evit":
            return evit_budget(geo, self.evit.keep_rate, self.evit.layers, self.evit.fuse,
                               keep=self.evit.keep)
        return no_budget(geo)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


def shipped() -> dict[str, Path]:
    """Names → paths of the recipes that ship inside the package."""
    root = resources.files("vtc") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def _set(data: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise RecipeError(f"--set {dotted!r}: expected key=value, e.g. --set tome.r=8")
    key, raw = dotted.split("=", 1)
    parts = [("validate" if p == "validate_" else p) for p in key.strip().split(".")]
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {key}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = yaml.safe_load(raw)


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or any YAML file by path, apply --set overrides."""
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped():
        path = shipped()[name_or_path]
    if not path.is_file():
        raise RecipeError(
            f"recipe {name_or_path!r} not found: give a path to a YAML file or one of "
            f"{', '.join(sorted(shipped()))}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    for item in overrides or []:
        _set(data, item)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = f"unknown key {loc!r} (check the spelling; see recipes/ for the known keys)"
        raise RecipeError(f"recipe {path}: {loc}: {msg}") from exc
