"""The report: one typed definition that the pipeline writes and everything else reads.

`Report` is what `report.json` holds. The pipeline fills it, the gates read it,
`report.md`, the CLI summary and sweeps render it. `vtc/report.schema.json` is its
JSON Schema, generated from these dataclasses (`python -m vtc.report` prints it; a
test fails when the shipped file and the type disagree) and bumped with
`SCHEMA_VERSION` whenever a field changes meaning.

Conventions: lengths and counts are ints, everything measured is a float, and a
tier that was not measured is `null` (never absent).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

# 2: timing samples, speedup interval, machine, engine precision; 3: throughput.speedup is
# the paired estimate (speedup_median keeps the median-latency ratio), payoff,
# gates_skipped_why
SCHEMA_VERSION = 3

Kind = Literal["min", "max"]


@dataclass
class SourceInfo:
    spec: str  # what the user gave as SOURCE
    kind: Literal["hf", "onnx"]
    model_type: str | None = None
    family: str | None = None


@dataclass
class LayerInfo:
    """One block of the budget (`vtc.budget.LayerPlan`)."""

    index: int
    tokens_in: int
    tokens_out: int
    method: str
    params: dict[str, Any]
    attn_bias: bool
    # how the graph writes the reduction: "gather" | "compact" ("" where none is made)
    formulation: str = ""


@dataclass
class BudgetInfo:
    """The static schedule (`vtc.budget.Budget.to_dict`)."""

    methods: list[str]
    settings: dict[str, dict[str, Any]]  # each method's resolved recipe section
    tokens_in: int
    protected: int
    tokens_per_layer: list[int]  # tokens entering each block
    tokens_out: int
    layers: list[LayerInfo]
    flops_base: int  # MACs per image, uncompressed
    flops: int  # MACs per image, compressed
    flops_ratio: float
    flops_overhead: int  # the reductions' own bookkeeping MACs (not in flops_ratio)
    # each attention-ranked method's token score: "cls" (attention from the CLS token) or
    # "mean" (attention received, averaged over heads and queries)
    scores: dict[str, Literal["cls", "mean"]] = field(default_factory=dict)


@dataclass
class UnmergeInfo:
    after_block: int
    tokens: int
    consumers: list[str]


@dataclass
class TokensOutInfo:
    """A graph output that is the token sequence (an encoder's memory for a decoder)
    and what the recipe's `tokens_out` did with it."""

    mode: Literal["unmerge", "merged"]  # full length, or merged + token_sizes
    outputs: list[str]  # the token-sequence outputs
    tokens: int  # tokens in those outputs after compression
    sizes_output: str | None  # merged: the [B, N'] output of each token's size


@dataclass
class SiteInfo:
    """One reducing block of the graph: the formulation it was written in, why, the
    nodes it added and the cost model's figures for each formulation it could take
    (`vtc.budget`: per batch, µs = batch · (macs / rate + elements / rate) + nodes ·
    launch, with the prices of `engine`)."""

    block: int
    method: str
    formulation: Literal["gather", "compact"]
    chosen_by: Literal["cost", "recipe"]  # the cost model, or the method's `formulation`
    # ONNX nodes the site added, with the log-size bias its sizes cause in the next block
    nodes: int
    engine: str  # the prices used (`vtc.budget.ENGINE_COSTS` key)
    batch: int  # the batch they were priced at
    cost_us: dict[str, float]  # modelled µs per batch, per formulation
    macs: dict[str, int]  # MatMul MACs per image, per formulation
    elements: dict[str, int]  # elements written per image, per formulation
    model_nodes: dict[str, int]  # nodes per formulation as the model counted them


@dataclass
class GraphInfo:
    """What the compress stage did to the graph."""

    blocks: int
    sites: int  # reductions inserted
    constants_fixed: int  # baked token counts rewritten by the shape fix-up
    batch_constants: int  # baked batches rewritten (dynamic batch only)
    unmerge: UnmergeInfo | None
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    tokens_out: TokensOutInfo | None = None  # only when an output is the token sequence
    reductions: list[SiteInfo] = field(default_factory=list)  # one per site, block order


@dataclass
class RunConfigInfo:
    """How an engine computes: its arithmetic and the provider options passed through."""

    precision: Literal["fp32", "fp16"]
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class EngineInfo:
    """The deployed engines (the bundle's file; throughput is timed on them) and, when
    they compute differently (fp16, TF32), the reference engines parity and fidelity
    ran on (`reference`: fp32, TF32 off; `vtc.backends.options`)."""

    kind: str  # the engine registry's name: ort, tensorrt
    providers: list[str]  # execution providers in use (ORT); [] for other engines
    file: str  # the compressed engine's file in the bundle
    precision: str = "fp32"  # the arithmetic the deployed engines run in
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    cuda_graph: bool = False  # the deployed engines replay a CUDA graph
    io_binding: bool = False  # timing kept inputs and outputs on the device
    reference: RunConfigInfo | None = None  # null: parity ran on the deployed engines
    nodes: dict[str, int] = field(default_factory=dict)  # per built engine: baseline, compressed
    # nodes per execution provider in the deployed compressed engine (one profiled run;
    # measured when a provider other than the CPU is requested)
    placement: dict[str, int] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)  # nodes off the CUDA EP (first 50)
    # what the precision conversion did: fp16 nodes fp16/fp32 and casts; int8 MatMul/Gemm
    # nodes int8 and those kept fp32
    conversion: dict[str, int] = field(default_factory=dict)


@dataclass
class MachineInfo:
    """Where the figures were measured: absolute throughput is comparable between two
    reports only when these agree (`vtc check`)."""

    cpu: str  # CPU model name
    cores: int  # logical CPUs the process may use
    system: str  # OS and architecture
    python: str
    onnxruntime: str | None  # None when onnxruntime is not installed
    providers: list[str]  # the execution providers the engines used
    gpu: str | None = None  # the GPU's name when the engines ran on CUDA


@dataclass
class FusionInfo:
    """Fused-op counts of both optimised engines; `lost` must stay empty."""

    baseline: dict[str, int]
    compressed: dict[str, int]
    lost: dict[str, int]
    gained: dict[str, int]


@dataclass
class ZeroInput:
    """A graph input other than the image, fed zeros: `shape` (its first dim follows the
    image batch) and numpy `dtype`."""

    shape: list[int]
    dtype: str


@dataclass
class Preprocess:
    """How an image becomes the model input `name[B, channels, height, width]` (the
    recipe's `input:` section resolved against the graph; the bundle's preprocess.json).

    resize: `crop` (cover round(H·256/224) × round(W·256/224), center crop), `pad` (fit
    inside, centred on black) or `stretch` (whole image to H×W); then pixels / 255,
    `(x - mean) / std` per channel. `zero_inputs`: the graph's other inputs, fed zeros.
    `origin`: where each of `image_size`, `mean`, `std`, `resize` and `labels` came from:
    "recipe", "preprocessor_config.json" / "config.json" (beside an ONNX source, or the
    checkpoint's), "graph" (its static input shape) or "default" (vtc's)."""

    name: str
    channels: int
    height: int
    width: int
    resize: Literal["crop", "pad", "stretch"]
    mean: list[float]
    std: list[float]
    zero_inputs: dict[str, ZeroInput] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


@dataclass
class InputsInfo:
    kind: Literal["synthetic", "images", "photos"]
    count: int
    note: str
    seed: int | None = None
    folder: str | None = None
    names: list[str] | None = None
    preprocess: Preprocess | None = None  # None only in reports of older vtc versions


@dataclass
class Stats:
    """Difference statistics of a candidate output against a reference
    (`vtc.validate.parity.compare`); `shape` is the common array shape.

    `max_rel_diff` is `max |c - r| / max(|r|, floor)` with `floor = 1e-6 + 1e-3 · max|r|`
    so near-zero reference entries do not explode it."""

    max_abs_diff: float
    mean_abs_diff: float
    p99_abs_diff: float
    max_rel_diff: float
    cosine_min: float
    cosine_mean: float
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ParityInfo:
    export: Stats | None  # baseline engine vs the eager model
    engine: Stats | None  # compressed engine vs the eager reference at the same budget
    note: str = ""


@dataclass
class FidelityInfo:
    """Compressed vs uncompressed engine: per sample, or per token for a token-sequence
    output (`basis`: "token" compares every token after unmerge; "pooled" the
    size-weighted mean token, when pruned tokens cannot be unmerged)."""

    n: int
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None = None  # classifiers only
    top5_agreement: float | None = None  # classifiers with >= 5 classes
    basis: Literal["sample", "token", "pooled"] = "sample"


@dataclass
class DeploymentInfo:
    """The deployed compressed engine (`EngineInfo.precision`, provider options)
    against the reference compressed engine (fp32, TF32 off) on the same inputs: what
    deploying in that arithmetic costs. Parity is never judged on it."""

    precision: str
    n: int
    cosine_mean: float
    cosine_min: float
    top1_agreement: float | None = None  # classifiers only
    basis: Literal["sample", "token", "pooled"] = "sample"
    accuracy: float | None = None  # the probe on the deployed engine, percent
    accuracy_drop_points: float | None = None  # reference engine's accuracy minus it


@dataclass
class DenseInfo:
    output: str
    n: int
    pearson_mean: float
    pearson_min: float
    iou_mean: float
    iou_min: float
    threshold_quantile: float
    pearson: list[float]
    iou: list[float]


@dataclass
class TimingInfo:
    """Latency of one runner for a batch of `batch` images over `n` timed calls
    (`vtc.validate.bench.measure_interleaved`)."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    img_per_s: float
    n: int
    batch: int
    samples_ms: list[float] = field(default_factory=list)  # every timed call, in order

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class IntervalInfo:
    """A bootstrap confidence interval: the statistic recomputed on `resamples`
    resamplings (with replacement, fixed seed) of the interleaved rounds."""

    statistic: str  # what `estimate`, `low` and `high` measure
    estimate: float  # the statistic on the run's own rounds
    low: float
    high: float
    level: float  # e.g. 0.95
    resamples: int
    seed: int


@dataclass
class ThroughputInfo:
    batch: int
    baseline_ips: float
    compressed_ips: float
    eager_ips: float | None
    eager_compressed_ips: float | None
    speedup: float  # the paired estimate (= speedup_ci.estimate): the one headline figure
    speedup_ci: IntervalInfo  # the paired speedup estimate and its interval (vtc.stats)
    efficiency: float  # speedup / flops_ratio
    baseline: TimingInfo
    compressed: TimingInfo
    eager: TimingInfo | None
    eager_compressed: TimingInfo | None
    method: str
    # baseline p50 / compressed p50: kept for the record, not the headline (it jumps
    # between the two latency levels of a bimodal CPU; `vtc.stats`)
    speedup_median: float | None = None


def speedup_text(t: ThroughputInfo, digits: int = 2) -> str:
    """The headline speedup as every view prints it: ``1.23× [1.09, 1.67]`` (the paired
    estimate and its bootstrap interval)."""
    ci = t.speedup_ci
    return f"{ci.estimate:.{digits}f}× [{ci.low:.{digits}f}, {ci.high:.{digits}f}]"


@dataclass
class PayoffInfo:
    """Whether compression paid off in wall-clock time on this model, and when it did
    not, a budget the FLOPs model suggests (`vtc.validate.payoff`; not a measurement).

    `verdict`: "pays" (the whole speedup interval lies above 1), "noise" (the interval
    reaches 1: no speedup beyond timing noise), "slower" (the whole interval lies below
    1), "below_gate" (faster, but the min_speedup gate failed)."""

    verdict: Literal["pays", "noise", "slower", "below_gate"]
    message: str  # one plain sentence for the summary and report.md
    target_speedup: float | None = None  # what the suggestion aims at
    target_flops_ratio: float | None = None  # target_speedup / measured efficiency
    suggestion: str | None = None  # e.g. "--set tome.r=14"
    suggestion_flops_ratio: float | None = None  # the FLOPs ratio of that budget
    basis: str = ""  # how the suggestion was derived


@dataclass
class DatasetInfo:
    name: str
    source: str
    n_train: int
    n_test: int
    n_classes: int
    classes: list[str]
    image_shape: list[int]
    seed: int
    selection: str


@dataclass
class AccuracyInfo:
    """The linear probe (percent)."""

    dataset: DatasetInfo
    n_train: int
    n_test: int
    n_classes: int
    baseline_acc: float
    compressed_acc: float
    drop_points: float
    embedding_cosine_mean: float
    embedding_cosine_min: float
    classifier: str


@dataclass
class TaskInfo:
    """The user's task metric (`validate.task`, `vtc.validate.usertask`): the function's
    import path, the images it scored and the metrics it returned."""

    function: str
    n: int
    metrics: dict[str, float]


@dataclass
class ZeroShotInfo:
    """Zero-shot agreement of an image–text model (full CLIP; `vtc.validate.zero_shot`):
    the bundle's compressed vision engine and text engine against the eager, uncompressed
    HF CLIPModel on the same images and captions. Rankings use cosine similarity of the
    embeddings (CLIP's logit scale does not change them)."""

    n_images: int
    n_captions: int
    captions: list[str]
    captions_from: Literal["default", "recipe", "file"]  # vtc's list, validate.captions, --captions
    text_length: int  # tokens per caption (text.onnx's T)
    captions_truncated: int  # captions longer than text_length tokens, cut to it
    # fraction of images whose top caption (engines) is the eager model's top caption
    image_top1_agreement: float
    # fraction of captions whose top image (engines) is the eager model's; None with < 2 images
    caption_top1_agreement: float | None
    image_cosine_mean: float  # image_embeds, compressed engine vs eager CLIPModel
    image_cosine_min: float
    text_parity: Stats  # text engine's text_embeds vs the eager CLIPModel's
    top_caption_engine: list[int]  # per image: the index of its top caption (engines)
    top_caption_eager: list[int]  # per image: the same for the eager CLIPModel
    text_graph: str  # the text tower's files in the bundle
    text_engine: str


@dataclass
class TrtFinding:
    """One TensorRT 10 ONNX-parser finding (`vtc.backends.trt_lint`): the node (or
    tensor / graph input) it is about, its op, what TensorRT does with it and the fix."""

    node: str
    op: str
    problem: str
    fix: str
    severity: Literal["error", "warning"]


@dataclass
class TrtLintInfo:
    """`vtc lint-trt` on the bundle's model.onnx: counts and every finding (an error
    stops a `backend.kind: tensorrt` build before the engine is built)."""

    errors: int
    warnings: int
    findings: list[TrtFinding] = field(default_factory=list)


@dataclass(frozen=True)
class Gate:
    """One gate: `kind == "min"` passes when `value >= limit`, `"max"` when
    `value <= limit`. `value` is None (and `passed` False) when not measured."""

    name: str
    value: float | None
    limit: float
    passed: bool
    kind: Kind
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    """Everything `report.json` holds (module docstring)."""

    vtc_version: str
    source: SourceInfo
    recipe: dict[str, Any]
    budget: BudgetInfo
    graph: GraphInfo
    engine: EngineInfo
    machine: MachineInfo
    fusions: FusionInfo | None
    inputs: InputsInfo
    output: str  # the output the tiers compare
    parity: ParityInfo
    fidelity: FidelityInfo
    dense: DenseInfo | None
    throughput: ThroughputInfo | None
    accuracy: AccuracyInfo | None
    task: TaskInfo | None = None
    deployment: DeploymentInfo | None = None  # null: the deployed engines are the reference
    trt_lint: TrtLintInfo | None = None  # model.onnx against TensorRT 10's ONNX parser
    zero_shot: ZeroShotInfo | None = None  # image–text models only (full CLIP)
    gates: list[Gate] = field(default_factory=list)
    gates_skipped: list[str] = field(default_factory=list)
    gates_skipped_why: dict[str, str] = field(default_factory=dict)  # name → why not judged
    payoff: PayoffInfo | None = None  # null: not timed (or too few rounds to say)
    passed: bool = True
    elapsed_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """A report read back from report.json (pydantic validates every field)."""
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_python(data)


# gate name -> (path of attributes into the report, kind)
GATES: dict[str, tuple[tuple[str, ...], Kind]] = {
    # the upper end of the paired speedup's interval: fails only on a slowdown beyond noise
    "min_speedup": (("throughput", "speedup_ci", "high"), "min"),
    "min_efficiency": (("throughput", "efficiency"), "min"),
    "max_parity_diff": (("parity", "engine", "max_abs_diff"), "max"),
    "max_export_diff": (("parity", "export", "max_abs_diff"), "max"),
    "min_fidelity_cosine": (("fidelity", "cosine_mean"), "min"),
    "min_top1_agreement": (("fidelity", "top1_agreement"), "min"),
    # scoped fidelity floors: each judged only on its output kind (FIDELITY_SCOPE)
    "min_sample_cosine": (("fidelity", "cosine_mean"), "min"),
    "min_token_cosine": (("fidelity", "cosine_mean"), "min"),
    "min_flops_ratio": (("budget", "flops_ratio"), "min"),
    "max_accuracy_drop": (("accuracy", "drop_points"), "max"),
    "min_embedding_cosine": (("accuracy", "embedding_cosine_mean"), "min"),
    "min_dense_pearson": (("dense", "pearson_mean"), "min"),
    "min_dense_iou": (("dense", "iou_mean"), "min"),
    "min_deploy_cosine": (("deployment", "cosine_min"), "min"),
    "min_deploy_top1": (("deployment", "top1_agreement"), "min"),
    "max_deploy_accuracy_drop": (("deployment", "accuracy_drop_points"), "max"),
    "min_zero_shot_image_top1": (("zero_shot", "image_top1_agreement"), "min"),
    "min_zero_shot_caption_top1": (("zero_shot", "caption_top1_agreement"), "min"),
    "min_zero_shot_cosine": (("zero_shot", "image_cosine_mean"), "min"),
    "max_text_parity_diff": (("zero_shot", "text_parity", "max_abs_diff"), "max"),
}
# gates of the zero-shot tier: skipped (and listed) when the model has no text tower
ZERO_SHOT_GATES = tuple(g for g, (path, _) in GATES.items() if path[0] == "zero_shot")
# fidelity floors scoped to one output kind (`output_kind`), skipped on the others, so
# one recipe carries the floor of each kind: top-1 agreement for logits, per-image
# cosine for embeddings, per-token cosine for token sequences
FIDELITY_SCOPE: dict[str, str] = {"min_top1_agreement": "logits",
                                  "min_sample_cosine": "embeddings",
                                  "min_token_cosine": "tokens"}


def output_kind(f: FidelityInfo, dense: bool = False
                ) -> Literal["logits", "embeddings", "tokens", "dense"]:
    """What the compared output is: a dense map (`dense`: the report has a dense tier;
    its own gates judge it), a token sequence (per-token or pooled fidelity), a
    classifier's logits (top-1 measured) or an embedding / feature output."""
    if dense:
        return "dense"
    if f.basis in ("token", "pooled"):
        return "tokens"
    return "logits" if f.top1_agreement is not None else "embeddings"


TASK_GATE = re.compile(r"^(min|max)_task\.([A-Za-z_]\w*)$")


def task_gate(name: str) -> tuple[str, Kind] | None:
    """`min_task.NAME` / `max_task.NAME` → (NAME, kind): a gate on a metric the user's
    task function returns (`report.task.metrics`); None for other names."""
    m = TASK_GATE.match(name)
    return (m.group(2), "min" if m.group(1) == "min" else "max") if m else None


def lookup(report: object, path: tuple[str, ...]) -> Any:
    """The value at `path` (attribute names), or None where a tier is null."""
    node: Any = report
    for key in path:
        if node is None:
            return None
        node = getattr(node, key)
    return node


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, dataclasses, Paths, tuples and sets → JSON types."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `Report` (what `vtc/report.schema.json` ships)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(Report).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vtc report.json"
    schema["description"] = f"vtc report, schema version {SCHEMA_VERSION}"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
