"""Recipes: YAML files validated by pydantic (unknown keys are errors).

A recipe names its reduction method(s) — `method: tome`, or a chain over disjoint
blocks, `method: [tome, evit]` — each configured in its own section (the method
registry, `vtc.methods`, supplies the sections), and how to export, which engine
to build, how to validate and which gates decide the exit code. Shipped recipes
live in `recipes/` inside the package; a path to any YAML file works too.
`--set a.b=value` overrides one field (value parsed as YAML).
"""

from __future__ import annotations

import math
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic import model_validator as _model_validator

from vtc import methods
from vtc.backends import engines
from vtc.backends.options import Int8Activations, Int8Role
from vtc.budget import Budget, Geometry, Pricing
from vtc.data import names as dataset_names
from vtc.data.captions import check_captions
from vtc.errors import InputError
from vtc.methods.base import Method, MethodConfig, refuse_bools
from vtc.report import GATES, task_gate
from vtc.report_vlm import VLM_GATES


class RecipeError(InputError):
    """A recipe that cannot be loaded or validated (an input error)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @_model_validator(mode="before")
    @classmethod
    def _no_bools(cls, data: Any) -> Any:
        return refuse_bools(cls, data)  # `--set export.batch=true` is not batch 1


# What the dynamo exporter writes (it cannot go below 18) and ONNX Runtime 1.32 runs.
OPSETS = range(18, 25)


class ExportCfg(_Strict):
    opset: int = 18
    batch: int = Field(default=8, ge=1)
    image_size: int | None = Field(default=None, ge=1)
    # the engines' batch axis. null (default): any batch (a symbolic axis; --batch is the
    # batch timed and validated), except where a static one is needed or is all the source
    # has: a TensorRT engine or backend.cuda_graph: on (static profiles, graph capture), a
    # static-batch or several-input ONNX source, a graph whose batch cannot be made
    # symbolic. true: any batch, refused where it cannot be had. false: static, built at
    # --batch (what CUDA-graph capture and TensorRT static profiles want).
    dynamic_batch: bool | None = None
    # image–text models (full CLIP): tokens per caption of text.onnx (null: the text
    # config's max_position_embeddings)
    text_length: int | None = Field(default=None, ge=2)

    @field_validator("opset")
    @classmethod
    def _opset(cls, v: int) -> int:
        if v not in OPSETS:
            raise ValueError(f"opset {v} is not supported: vtc exports with opset "
                             f"{OPSETS[0]} to {OPSETS[-1]} (the dynamo exporter writes at least "
                             f"{OPSETS[0]}, ONNX Runtime runs up to {OPSETS[-1]})")
        return v


class InputCfg(_Strict):
    """How images become the model input (resolved against the graph's input at load)."""

    name: str | None = None  # the graph input carrying the image (graphs with several)
    channels: Literal[1, 3] | None = None  # null: the graph's (or the model config's)
    # null: crop for --images (and the runtime), stretch for datasets and photos
    resize: Literal["crop", "pad", "stretch"] | None = None
    mean: list[float] | None = Field(default=None, min_length=1, max_length=3)
    std: list[float] | None = Field(default=None, min_length=1, max_length=3)

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError(f"{v} holds a value that is not a finite number")
        return v

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(x > 0 for x in v):
            raise ValueError(f"std {v} must be positive (it divides the pixels)")
        return v


class BackendCfg(_Strict):
    kind: str = "ort"  # the engine registry's name: ort | tensorrt | openvino
    # the engine's own settings, checked against its schema (`Engine.options`), e.g.
    # openvino: {device: CPU, performance_hint: latency}; ort and tensorrt take none
    # (ONNX Runtime's settings below predate the per-engine schema)
    options: dict[str, Any] = Field(default_factory=dict)
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"],
                                 min_length=1)
    # null: OMP_NUM_THREADS when set (vtc.backends.options.env_threads), else the engine's
    threads: int | None = Field(default=None, ge=1, le=1024)
    # fp16: fp16 arithmetic with fp32 inputs, outputs and merge/prune decisions; int8:
    # weight MatMuls/Gemms int8, calibrated on the validation images, decisions fp32;
    # parity still runs an fp32 engine (vtc.backends.options)
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    # int8 only: the layer roles whose weight MatMuls/Gemms stay fp32, read from the graph
    # (vtc.passes.matmul_roles): attention_in (q, k, v), attention_out (o), mlp_in (fc1),
    # mlp_out (fc2), other (heads, poolers, anything not placed). null: the default of
    # the activation mode (vtc.passes.quantize.DEFAULT_KEEP_FP32: static attention_in,
    # attention_out; dynamic none); []: every weight MatMul int8 (faster; static loses
    # more accuracy: docs/int8.md). Named with
    # another precision it is refused (it would do nothing)
    int8_keep_fp32: list[Int8Role] | None = None
    # int8 only: static — activation ranges calibrated on the validation images (or
    # --images), QDQ; dynamic — each MatMul's input range measured on every call
    # (onnxruntime's quantize_dynamic), no calibration images, per-call cost of a
    # min/max pass, usually the faster engine on the CPU (docs/int8.md)
    int8_activations: Int8Activations = "static"
    # per execution provider, passed through: {CUDAExecutionProvider: {use_tf32: 0}}
    provider_options: dict[str, dict[str, str | int | float | bool]] = Field(
        default_factory=dict)
    cuda_graph: Literal["auto", "on", "off"] = "auto"  # auto: when every node runs on CUDA
    io_binding: bool = True  # timing keeps inputs and outputs on the device

    @_model_validator(mode="before")
    @classmethod
    def _fp16_alias(cls, data: Any) -> Any:
        """`fp16: true` (vtc ≤ 0.x recipes) is `precision: fp16`."""
        if isinstance(data, dict) and "fp16" in data:
            data = dict(data)
            if data.pop("fp16") is True:
                if data.get("precision", "fp16") != "fp16":
                    raise ValueError("fp16: true contradicts precision: "
                                     f"{data['precision']}; give precision only")
                data["precision"] = "fp16"
        return data

    @field_validator("int8_keep_fp32")
    @classmethod
    def _roles_once(cls, v: list[Int8Role] | None) -> list[Int8Role] | None:
        """Each role once, in the classifier's order."""
        return None if v is None else [r for r in get_args(Int8Role) if r in v]

    @_model_validator(mode="after")
    def _keep_fp32_needs_int8(self) -> BackendCfg:
        if self.int8_keep_fp32 is not None and self.precision != "int8":
            raise ValueError(f"int8_keep_fp32 applies to precision int8 only (precision is "
                             f"{self.precision}); set backend.precision: int8 or drop "
                             "int8_keep_fp32")
        if self.int8_activations != "static" and self.precision != "int8":
            raise ValueError(f"int8_activations applies to precision int8 only (precision "
                             f"is {self.precision}); set backend.precision: int8 or drop "
                             "int8_activations")
        return self

    @field_validator("cuda_graph", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML 1.1 reads a bare `on` / `off` as a boolean."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"
    # engines that run com.microsoft ops (ort): each attention block as one fused
    # MultiHeadAttention node in both engines (model.onnx itself stays portable)
    fuse_attention: bool = True

    @field_validator("kind")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in engines.names():
            raise ValueError(f"unknown engine {v!r}; known engines: {', '.join(engines.names())}")
        return v

    @_model_validator(mode="before")
    @classmethod
    def _engine_options(cls, data: Any) -> Any:
        """`options` against the schema of the engine `kind` names, defaults filled in (an
        unknown kind is left to the `kind` check)."""
        if not isinstance(data, dict) or not isinstance(data.get("options", {}), dict):
            return data
        kind = data.get("kind", "ort")
        if isinstance(kind, str) and kind in engines.names():
            data = {**data, "options": engines.get(kind).parse_options(data.get("options", {}))}
        return data


class ValidateCfg(_Strict):
    samples: int = Field(default=16, ge=1)
    warmup: int = Field(default=3, ge=0, le=10_000)
    repeats: int = Field(default=15, ge=1, le=100_000)
    min_time_s: float = Field(default=0.0, ge=0.0, le=86_400.0, allow_inf_nan=False)
    eager_throughput: bool = True
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    dataset: str | None = None  # labelled dataset for a linear probe (`vtc data list`)
    # split sizes for the probe, at most what the dataset has (null: all of it)
    probe_train: int | None = Field(default=2000, ge=2)
    probe_test: int | None = Field(default=2000, ge=1)
    # a task metric of the user's own: "package.module:function" (vtc.validate.usertask)
    task: str | None = None
    # image–text models (full CLIP): the captions of the zero-shot tier (null: the list
    # that ships with vtc, vtc.data.captions; `vtc-export --captions FILE` replaces both)
    captions: list[str] | None = None

    @field_validator("captions")
    @classmethod
    def _captions(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_captions(v)

    @field_validator("task")
    @classmethod
    def _import_path(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", v):
            raise ValueError(f"{v!r} is not an import path; give 'package.module:function'")
        return v

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str | None) -> str | None:
        if v is not None and v not in dataset_names():
            raise ValueError(f"unknown dataset {v!r}; known datasets: "
                             f"{', '.join(dataset_names())}")
        return v


class CheckCfg(_Strict):
    """Tolerances of `vtc check` (a bundle against a stored baseline). Drops are
    baseline minus now; speed drops are relative and judged on a bootstrap interval:
    a speed metric fails only when its whole interval lies below 1 - the drop."""

    max_speedup_drop: float = Field(default=0.05, ge=0.0, lt=1.0, allow_inf_nan=False)
    max_throughput_drop: float = Field(default=0.10, ge=0.0, lt=1.0, allow_inf_nan=False)
    max_cosine_drop: float = Field(default=0.002, ge=0.0, le=2.0, allow_inf_nan=False)
    max_agreement_drop: float = Field(default=0.02, ge=0.0, le=1.0, allow_inf_nan=False)
    max_accuracy_drop: float = Field(default=0.5, ge=0.0, le=100.0, allow_inf_nan=False)
    max_dense_drop: float = Field(default=0.02, ge=0.0, le=2.0, allow_inf_nan=False)
    # parity limit when the recipe has no max_parity_diff / max_export_diff gate
    max_parity_diff: float = Field(default=1e-4, gt=0.0, le=1.0, allow_inf_nan=False)
    confidence: float = Field(default=0.95, ge=0.5, lt=1.0, allow_inf_nan=False)


DEFAULT_PROMPTS = (
    "Describe the image.",
    "What is in the picture?",
    "What colour is the main object?",
    "Is there a person in this image?",
)


class GenerateCfg(_Strict):
    """Vision-language bundles (LLaVA): the decoder's precision and how the validation
    generates. Prompts have any length up to the decoder's max_length; `prompt_tokens`
    is the nominal text length the analytic prefill FLOPs are counted at."""

    precision: Literal["fp32", "fp16", "int4"] = "fp32"  # the decoder (the builder's -p)
    prompt_tokens: int = Field(default=64, ge=1, le=32768)
    max_new_tokens: int = Field(default=16, ge=1, le=4096)
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1)
    rounds: int = Field(default=10, ge=1, le=1000)  # interleaved timing rounds
    # the image size (pixels: one side, or [height, width]) a bundle of a family with
    # dynamic resolution (Qwen2.5-VL) is built for; null: the family's default (448)
    image_size: int | list[int] | None = None
    # the eager reference's LM layers read from the checkpoint one matrix at a time when
    # they run, instead of held in memory in fp32 (vtc.vlm.stream); an fp16/int4 bundle
    # then gets no fp32 twin decoder (it would not fit either) and is judged against the
    # eager reference directly (parity.deployment). auto: when the LM's fp32 layers take
    # over 40 % of this machine's memory (a 7B LM on a 24 GiB machine). LLaVA only
    stream_lm: Literal["auto"] | bool = "auto"

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: int | list[int] | None) -> int | list[int] | None:
        sides = [v] if isinstance(v, int) else v or []
        if v is not None and (len(sides) not in (1, 2) or min(sides) < 1):
            raise ValueError(f"generate.image_size is {v}; give one side or [height, width] "
                             "in pixels, e.g. 448 or [448, 672]")
        return v

    @field_validator("prompts")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        blank = [i for i, p in enumerate(v) if not p.strip()]
        if blank:
            raise ValueError(f"prompt {blank[0]} is blank; give a question about the image")
        return v


# the values a gated metric can take (by the words of its gate's name): a floor at or
# below the least, or a ceiling at or above the greatest, is a gate that can never fail
_RANGES = (
    (("cosine", "pearson"), (-1.0, 1.0)),
    (("agreement", "top1", "iou", "tokens_equal", "exact_match"), (0.0, 1.0)),
    (("speedup", "efficiency", "flops_ratio", "prefill_ratio"), (0.0, math.inf)),
    (("accuracy_drop",), (-100.0, 100.0)),
    (("_diff",), (0.0, math.inf)),
)


def _metric_range(gate: str) -> tuple[float, float]:
    """(least, greatest) value of the metric `gate` judges (±inf when unbounded: a task
    metric's)."""
    if task_gate(gate) is None:
        for words, bounds in _RANGES:
            if any(w in gate for w in words):
                return bounds
    return -math.inf, math.inf


class RecipeBase(_Strict):
    """The method-neutral part of a recipe; `recipe_model()` adds one section per method."""

    name: str
    description: str = ""
    method: list[str]
    # copy merged tokens back to the full grid before a consumer that needs it (dense heads)
    unmerge: Literal["auto", "always", "never"] = "auto"
    # a graph output that is the token sequence (an encoder a decoder reads): unmerge it to
    # full length, or keep it merged with a second output, token_sizes [B, N']
    tokens_out: Literal["unmerge", "merged"] = "unmerge"
    export: ExportCfg = Field(default_factory=ExportCfg)
    input: InputCfg = Field(default_factory=InputCfg)
    backend: BackendCfg = Field(default_factory=BackendCfg)
    validate_: ValidateCfg = Field(default_factory=ValidateCfg, alias="validate")
    gates: dict[str, float] = Field(default_factory=dict)
    check: CheckCfg = Field(default_factory=CheckCfg)
    generate: GenerateCfg = Field(default_factory=GenerateCfg)

    @field_validator("method", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> list[str]:
        names = [v] if isinstance(v, str) else v
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("method is a method name or a list of them, e.g. tome or "
                             "[tome, evit]")
        names = [n for n in names if n != "none"]
        for n in names:
            methods.get(n)  # InputError listing the known methods
        if len(set(names)) != len(names):
            raise ValueError(f"method {names} names a method twice")
        return names

    @field_validator("gates")
    @classmethod
    def _known_gates(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(g for g in set(v) - set(GATES) - set(VLM_GATES)
                         if task_gate(g) is None)
        if unknown:
            raise ValueError(f"unknown gate(s) {unknown}; known gates: {', '.join(GATES)}, "
                             f"for vision-language bundles {', '.join(VLM_GATES)}, "
                             "min_task.NAME / max_task.NAME (a validate.task metric)")
        bad = sorted(k for k, limit in v.items() if not math.isfinite(limit))
        if bad:
            raise ValueError(f"gate limit(s) of {bad} are not finite numbers; give a number, "
                             "e.g. gates.min_speedup=1.5")
        for gate, limit in sorted(v.items()):
            lo, hi = _metric_range(gate)
            if (gate.startswith("min") and limit <= lo) or (gate.startswith("max") and limit >= hi):
                bound = f"at least {lo:g}" if gate.startswith("min") else f"at most {hi:g}"
                raise ValueError(f"gates.{gate}={limit:g} can never fail (the metric is "
                                 f"{bound}); give a limit inside ({lo:g}, {hi:g}) or drop the "
                                 "gate")
        return v

    @_model_validator(mode="after")
    def _probe_gates_need_a_dataset(self) -> RecipeBase:
        probe = [g for g in ("max_accuracy_drop", "min_embedding_cosine") if g in self.gates]
        if probe and self.validate_.dataset is None:
            raise ValueError(f"gate(s) {probe} need validate.dataset (e.g. fashion-mnist)")
        if "max_deploy_accuracy_drop" in self.gates and self.validate_.dataset is None:
            raise ValueError("gate max_deploy_accuracy_drop needs validate.dataset (e.g. "
                             "fashion-mnist)")
        deploy = sorted(g for g in self.gates
                        if g in GATES and g.startswith(("min_deploy", "max_deploy")))
        vlm_deploy = sorted(g for g in self.gates if g in VLM_GATES and
                            VLM_GATES[g][0][:2] == ("parity", "deployment"))
        if vlm_deploy and self.generate.precision == "fp32":
            raise ValueError(f"gate(s) {vlm_deploy} judge an fp16 or int4 decoder against its "
                             "fp32 twin; set generate.precision: fp16 or int4, or drop them")
        b = self.backend
        cuda = "CUDAExecutionProvider" in b.providers
        if deploy and b.precision == "fp32" and not cuda:
            raise ValueError(f"gate(s) {deploy} judge a deployed engine that differs from the "
                             "fp32 reference one; set backend.precision: fp16 or int8 (or "
                             "deploy on the CUDA execution provider), or drop them")
        task = sorted(g for g in self.gates if task_gate(g) is not None)
        if task and self.validate_.task is None:
            raise ValueError(f"gate(s) {task} need validate.task "
                             "('package.module:function' returning those metrics)")
        return self

    def section(self, name: str) -> MethodConfig:
        """The recipe section of method `name` (its defaults when the file has none)."""
        cfg = getattr(self, name)
        assert isinstance(cfg, MethodConfig)
        return cfg

    def sections(self) -> list[tuple[Method, MethodConfig]]:
        """(method, its section) for every method of the recipe, in its order."""
        return [(methods.get(n), self.section(n)) for n in self.method]

    def budget(self, geo: Geometry, batch: int | None = None) -> Budget:
        """Resolve the recipe's encoder budget against a model geometry (BudgetError on
        misfit), each site's formulation priced for this recipe's engine at `batch`
        (default: export.batch). Cuts outside the encoder (`methods.cut`) claim no block."""
        return methods.plan_budget(geo, [s for s in self.sections() if s[0].site == "encoder"],
                                   self.pricing(batch))

    def pricing(self, batch: int | None = None) -> Pricing:
        """The engine the cost model prices sites for (`vtc.budget.ENGINE_COSTS`): the
        backend's kind, ONNX Runtime on the CUDA EP apart."""
        b = self.backend
        kind = "ort-cuda" if b.kind == "ort" and b.providers[0] == "CUDAExecutionProvider" \
            else b.kind
        return Pricing(kind, batch or self.export.batch)

    def cuts(self) -> list[tuple[Method, MethodConfig]]:
        """The recipe's cuts outside the encoder (vision-language models only)."""
        return [s for s in self.sections() if s[0].site != "encoder"]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


@cache
def recipe_class(registered: tuple[str, ...]) -> type[RecipeBase]:
    """The recipe model with one section per registered method."""
    fields: dict[str, Any] = {
        name: (m.config, Field(default_factory=m.config))
        for name, m in methods.methods().items() if name in registered
    }
    return create_model("Recipe", __base__=RecipeBase, **fields)


def recipe_model() -> type[RecipeBase]:
    """The recipe model of the methods registered now (a method registered after
    import, e.g. by a plugin or a test, is included)."""
    return recipe_class(tuple(methods.names()))


def shipped() -> dict[str, Path]:
    """Names → paths of the recipes that ship inside the package."""
    root = resources.files("vtc") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def _set(data: dict[str, Any], dotted: str) -> None:
    if "=" not in dotted:
        raise RecipeError(f"--set {dotted!r}: expected key=value, e.g. --set tome.r=8")
    key, raw = dotted.split("=", 1)
    if not raw.strip():
        raise RecipeError(f"--set {dotted!r}: the value is empty (an unset shell variable?); "
                          f"give a value, or {key.strip()}=null to clear the field")
    parts = [("validate" if p == "validate_" else p) for p in key.strip().split(".")]
    if parts[0] == "gates" and len(parts) > 2:  # gate names may hold dots: min_task.NAME
        parts = ["gates", ".".join(parts[1:])]
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {key}: {p!r} is not a section")
        cur = nxt
    try:
        cur[parts[-1]] = _yaml(raw)
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {dotted}: the value is not valid YAML "
                          f"({' '.join(str(exc).split())})") from exc


def from_dict(data: dict[str, Any], where: str) -> RecipeBase:
    """Validate a recipe mapping; `where` names it in errors (a file, or a --set)."""
    try:
        return recipe_model().model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown key {loc!r} (check the spelling; see recipes/ for the known keys)"
        raise RecipeError(f"{where}: {loc + ': ' if loc else ''}{msg}") from exc


class _UniqueKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (the later one would win
    silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-4` as text: its floats need a dot. Read an exponent without
# one as a number, as YAML 1.2 and every user writing `--set gates.x=1e-4` expect.
_UniqueKeys.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_value(text: str) -> Any:
    """One YAML value as `--set` reads it (`1e-4` a number); yaml.YAMLError if invalid."""
    return _yaml(text)


MAX_VALUES = 100_000  # a recipe holds a few dozen; YAML aliases can multiply them


def _yaml(text: str) -> Any:
    """safe_load with unique keys; a document nested too deeply for the parser, or one
    whose aliases expand past MAX_VALUES values (a "billion laughs"), is a YAMLError."""
    try:
        data = yaml.load(text, Loader=_UniqueKeys)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    stack, seen = [data], 0
    while stack:  # count values as validation would visit them, aliases expanded
        item = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise yaml.YAMLError(f"it expands to more than {MAX_VALUES:,} values (aliases "
                                 "repeating aliases?)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return data


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> RecipeBase:
    """Load a shipped recipe by name or any YAML file by path, apply --set overrides."""
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped():
        path = shipped()[name_or_path]
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file (a device, pipe or socket)"
        raise RecipeError(f"recipe {name_or_path!r} is {what}; give a YAML file or one of "
                          f"{', '.join(sorted(shipped()))}")
    if not path.is_file():
        raise RecipeError(
            f"recipe {name_or_path!r} not found: give a path to a YAML file or one of "
            f"{', '.join(sorted(shipped()))}"
        )
    try:
        data = _yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise RecipeError(f"recipe {path}: not valid YAML text "
                          f"({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    base = from_dict(dict(data), f"recipe {path}")  # the file alone must be valid
    if not overrides:
        return base
    for item in overrides:
        _set(data, item)
    return from_dict(data, f"recipe {path} with --set {' --set '.join(overrides)}")


Recipe = RecipeBase  # the type to annotate with; validate through `recipe_model()`
