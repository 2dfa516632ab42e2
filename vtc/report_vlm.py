"""The typed report of a vision-language bundle (`report.json` with ``kind: "vlm"``).

Parts: the cuts and the token counts they give (`CutsInfo`), engine parity of the
generation against the eager HF model with the same cuts (`parity.generation`),
fidelity against the uncut eager model (`GenerationFidelity`), and cost
(`VlmCost`: vision and prefill latency, decode tokens/s, uncut vs cut engines timed
interleaved; the analytic prefill FLOPs ratio). `VLM_GATES` maps the gates a VLM recipe
may set to their paths here (`vtc.validate.report_vlm` judges them and writes
report.md). `vlm.schema.json` is generated from these dataclasses
(``python -m vtc.report_vlm``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtc.report import Gate, Kind, MachineInfo, SourceInfo, to_jsonable

VLM_SCHEMA_VERSION = 1


@dataclass
class CutsInfo:
    """Where visual tokens go, per image, at a full prefill.

    tower_tokens: the vision tower's tokens (CLS included); encoder: the encoder cuts'
    label ("none" without) and tokens leaving the tower; steps: each cut outside the
    encoder (method, site, tokens_in, tokens_out, layer for an LM cut, the frozen
    params), projector cuts first, then LM cuts by layer; visual_tokens_uncut /
    visual_tokens: what the LM reads without / with the cuts before it; lm_layer_tokens:
    tokens each LM layer reads at a full prefill (an LM cut shortens the layers from L on);
    prefill_length(_uncut): the nominal prompt lengths (visual + prompt_tokens; prompts
    may have any length);
    flops_ratio: LM prefill MACs uncut / cut at those lengths; vision_flops_ratio: the
    same for the tower + projector; lm_gflops(_uncut): the LM's analytic prefill GFLOPs
    (2 × MACs; a layer whose cut ranks with its own projections counts them over the
    tokens before the cut), and each step's ``lm_gflops``: the LM's with the steps up to
    and including it (what each method leaves)."""

    tower_tokens: int
    encoder: str
    encoder_tokens_out: int
    steps: list[dict[str, Any]]
    visual_tokens_uncut: int
    visual_tokens: int
    prompt_tokens: int
    prefill_length_uncut: int
    prefill_length: int
    lm_layer_tokens_uncut: list[int]
    lm_layer_tokens: list[int]
    flops_ratio: float
    vision_flops_ratio: float
    lm_gflops_uncut: float = 0.0  # 0.0 in reports written before vtc recorded them
    lm_gflops: float = 0.0


@dataclass
class GenerationParity:
    """Engines vs the eager HF model with the same cuts, over `prompts` prompts:
    `tokens_equal` the fraction whose greedy tokens are identical,
    `first_logits_max_abs_diff` over the first step's logits, and the vision graph's
    image embeddings `vision_max_abs_diff`. `reference`: how the eager model held its
    LM (``resident``: fp32 in memory; ``streamed``: its layers read from the checkpoint
    one matrix at a time, `vtc.vlm.stream`, same arithmetic). The two decoder figures
    are None when no fp32 decoder was run (`note` says why: an fp16/int4 bundle of an LM
    too large for its fp32 twin, judged in `VlmParity.deployment` instead)."""

    prompts: int
    max_new_tokens: int
    tokens_equal: float | None
    first_logits_max_abs_diff: float | None
    vision_max_abs_diff: float
    reference: str = "resident"
    note: str = ""


@dataclass
class DeploymentParity:
    """A bundle whose decoder is not fp32 (``generate.precision`` fp16 or int4) against
    `against`, with the same cuts, over `prompts` prompts: ``fp32 twin`` (the fp32
    graphs `generation` judged against the eager model) or ``eager reference`` (the
    eager model itself, where no fp32 twin was built); `tokens_equal` the fraction whose
    greedy tokens are identical, the first step's logits cosine (min over prompts) and
    max abs difference."""

    precision: str
    prompts: int
    tokens_equal: float
    first_logits_cosine_min: float
    first_logits_max_abs_diff: float
    against: str = "fp32 twin"


@dataclass
class VlmParity:
    """`generation`: the fp32 graphs (the bundle's own, or the fp32 twin of an fp16/int4
    bundle) against the eager model with the same cuts; `deployment`: the fp16/int4
    bundle against that fp32 twin, or against the eager model where no twin was built
    (None for an fp32 bundle)."""

    generation: GenerationParity
    deployment: DeploymentParity | None = None


@dataclass
class GenerationFidelity:
    """The cut engines vs the uncut eager model (HF's own forward and generate):
    first-step logits cosine, agreement of the first token, and the fraction of prompts
    whose whole greedy continuation is identical. `random_weights`: the checkpoint's
    weights are random (a test or shape-faithful bench model), so these figures say
    nothing about a trained model's quality."""

    prompts: int
    first_logits_cosine_mean: float
    first_logits_cosine_min: float
    top1_agreement: float
    exact_match: float
    random_weights: bool


@dataclass
class VlmCost:
    """Median milliseconds over `rounds` interleaved rounds (uncut, cut) on the same
    prompt and image: the vision graph and the decoder's prefill (onnxruntime sessions on
    the bundles' graphs), and decode tokens/s (each bundle's runtime) over
    `decode_tokens` steps; `prefill_ratio` = cut / uncut prefill latency."""

    rounds: int
    vision_ms_uncut: float
    vision_ms: float
    prefill_ms_uncut: float
    prefill_ms: float
    prefill_ratio: float
    decode_tokens: int
    decode_tok_s_uncut: float
    decode_tok_s: float
    prefill_samples_ms_uncut: list[float] = field(default_factory=list)
    prefill_samples_ms: list[float] = field(default_factory=list)
    # per-round decode rates (tokens/s), paired like the prefill samples (empty in
    # reports written before vtc recorded them)
    decode_samples_tok_s_uncut: list[float] = field(default_factory=list)
    decode_samples_tok_s: list[float] = field(default_factory=list)


@dataclass
class VlmEngine:
    kind: str
    providers: list[str]
    graphs: dict[str, int]  # file → bytes (with external data)
    opset: int


@dataclass
class VlmReport:
    """Everything a VLM bundle's report.json holds (module docstring)."""

    vtc_version: str
    source: SourceInfo
    recipe: dict[str, Any]
    model: dict[str, Any]  # the geometry read from the config
    cuts: CutsInfo
    engine: VlmEngine
    machine: MachineInfo
    parity: VlmParity
    fidelity: GenerationFidelity
    cost: VlmCost | None
    gates: list[Gate] = field(default_factory=list)
    gates_skipped: list[str] = field(default_factory=list)
    passed: bool = True
    elapsed_s: float = 0.0
    kind: str = "vlm"
    schema_version: int = VLM_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))  # type: ignore[no-any-return]


# gate name -> (path into VlmReport, kind)
VLM_GATES: dict[str, tuple[tuple[str, ...], Kind]] = {
    "min_tokens_equal": (("parity", "generation", "tokens_equal"), "min"),
    "max_generation_logits_diff": (("parity", "generation", "first_logits_max_abs_diff"),
                                   "max"),
    "max_vision_diff": (("parity", "generation", "vision_max_abs_diff"), "max"),
    "min_logits_cosine": (("fidelity", "first_logits_cosine_mean"), "min"),
    "min_first_token_agreement": (("fidelity", "top1_agreement"), "min"),
    "min_exact_match": (("fidelity", "exact_match"), "min"),
    "max_prefill_ratio": (("cost", "prefill_ratio"), "max"),
    "min_deploy_tokens_equal": (("parity", "deployment", "tokens_equal"), "min"),
    "min_deploy_logits_cosine": (("parity", "deployment", "first_logits_cosine_min"), "min"),
}


def json_schema() -> dict[str, Any]:
    from pydantic import TypeAdapter

    schema = TypeAdapter(VlmReport).json_schema()
    schema["$id"] = "https://vtc.invalid/vlm.schema.json"
    return schema


SCHEMA_PATH = Path(__file__).with_name("vlm.schema.json")

if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SCHEMA_PATH}")
