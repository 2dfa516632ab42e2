"""Stage 5, validate: the three tiers of docs/architecture.md on the built engines.

1. export parity — the baseline engine against the eager model;
2. engine parity — the compressed engine against the eager reference at the same
   budget (two independent implementations of one algorithm must agree);
3. cost and benefit — fidelity (and dense-map fidelity), interleaved throughput of
   the engines and of eager torch (through `TorchRunner`), and the linear probe on a
   labelled dataset. Timing runs before the long probe, in a quiet process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vtc.backends.base import Runner
from vtc.backends.torch_eager import TorchRunner
from vtc.budget import Budget
from vtc.data import photo_batch
from vtc.data.images import batches, load_images, synthetic_batch
from vtc.data.skimage_sets import PHOTOS
from vtc.exporter.eager import run_reference
from vtc.recipe import RecipeBase
from vtc.report import (
    AccuracyInfo,
    DatasetInfo,
    DenseInfo,
    DeploymentInfo,
    FidelityInfo,
    InputsInfo,
    ParityInfo,
    TaskInfo,
    ThroughputInfo,
    TokensOutInfo,
)
from vtc.source import SourceError
from vtc.stages.compile import Compiled
from vtc.stages.load import Loaded
from vtc.validate.bench import measure_interleaved, throughput_info
from vtc.validate.fidelity import fidelity, pooled_fidelity, token_fidelity
from vtc.validate.parity import compare
from vtc.validate.tasks import (
    ModelInput,
    dense_report,
    probe_report,
    run_engine,
    run_outputs,
)
from vtc.validate.usertask import TaskFn, run_task

Log = Callable[[str], None]


@dataclass
class Inputs:
    x: np.ndarray  # float32 [N, C, H, W], normalised (the graph's image input)
    info: InputsInfo


@dataclass
class Validation:
    output: str
    inputs: InputsInfo
    parity: ParityInfo
    fidelity: FidelityInfo
    dense: DenseInfo | None
    throughput: ThroughputInfo | None
    accuracy: AccuracyInfo | None
    task: TaskInfo | None = None
    deployment: DeploymentInfo | None = None
    # the compared output of the tiers, per sample: "engine" (the compressed engine) and,
    # with an eager model, "eager_reference" (the eager reference at the same budget)
    references: dict[str, np.ndarray] = field(default_factory=dict)


def select_inputs(recipe: RecipeBase, images: Path | None, loaded: Loaded, dense: bool
                  ) -> Inputs:
    """--images, else the photos (dense outputs, probes, image–text models' zero-shot
    tier), else a synthetic batch; each
    shaped and normalised as the graph's image input `loaded.pre` says."""
    pre, batch = loaded.pre, loaded.batch
    size, c = loaded.hw, pre.channels
    n = max(batch, math.ceil(recipe.validate_.samples / batch) * batch)
    if images is not None:
        try:
            x = load_images(images, size, pre.mean, pre.std, limit=None, channels=c,
                            resize=pre.resize)
        except ValueError as exc:
            raise SourceError(f"--images: {exc}") from exc
        info = InputsInfo("images", len(x), f"resize {pre.resize}; the last batch is padded "
                          "with repeats; only real images are scored", folder=str(images))
    elif dense or recipe.validate_.dataset or loaded.captions is not None:
        x = photo_batch(size, pre.mean, pre.std, c, loaded.dataset_resize)
        info = InputsInfo("photos", len(x), "scikit-image's test photos, brought to the model "
                          f"input by resize {loaded.dataset_resize}", names=list(PHOTOS))
    else:
        x = synthetic_batch(n, size, seed=recipe.validate_.seed, channels=c)
        info = InputsInfo("synthetic", int(n), "fixed-seed standard normal pixels: fidelity "
                          "on real images may differ", seed=recipe.validate_.seed)
    info.preprocess = pre
    return Inputs(x.astype(np.float32), info)


def _eager(loaded: Loaded, budget: Budget | None
           ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The eager model (budget None) or the eager reference at `budget`, as name → tensor."""
    family, model = loaded.family, loaded.model
    assert family is not None
    if budget is not None:
        return lambda t: run_reference(family, model, t, budget)
    wrapped = family.wrap_for_export(model)
    return lambda t: dict(zip(wrapped.output_names, wrapped(t), strict=True))


def _fidelity(b: np.ndarray, c: np.ndarray, classifier: bool, eng: Compiled,
              inputs: Inputs, batch: int, tokens: TokensOutInfo | None) -> FidelityInfo:
    """Per sample; for a token-sequence output per token after unmerge (the unmerged
    twin's tokens when the bundle keeps them merged), or pooled for pruned tokens."""
    if tokens is None:
        return FidelityInfo(**fidelity(b, c, classifier))  # type: ignore[arg-type]
    if tokens.mode == "unmerge":
        return FidelityInfo(**token_fidelity(b, c))  # type: ignore[arg-type]
    if eng.twin is not None:
        full = run_engine(eng.twin, inputs.x, batch, eng.twin.output_names[0])
        return FidelityInfo(**token_fidelity(b, full))  # type: ignore[arg-type]
    assert tokens.sizes_output is not None
    sizes = run_engine(eng.compressed, inputs.x, batch, tokens.sizes_output)
    return FidelityInfo(**pooled_fidelity(b, c, sizes))  # type: ignore[arg-type]


def tiers(loaded: Loaded, budget: Budget, eng: Compiled, inputs: Inputs, dense: bool,
          tokens: TokensOutInfo | None = None
          ) -> tuple[str, ParityInfo, FidelityInfo, DenseInfo | None, dict[str, np.ndarray]]:
    """Parity (both tiers), fidelity and dense fidelity on `inputs`; the last item is
    the compared output of the compressed engine and the eager reference (the bundle's
    samples/reference.npz)."""
    name, batch = eng.compressed.output_names[0], loaded.batch
    b, c = run_engine(eng.baseline, inputs.x, batch), run_engine(eng.compressed, inputs.x, batch)
    refs = {"engine": c}
    if loaded.family is not None:
        ref_b, ref_c = TorchRunner(_eager(loaded, None)), TorchRunner(_eager(loaded, budget))
        with ref_b, ref_c:  # the same batches as the engines saw
            rb = run_engine(ref_b, inputs.x, batch, name)
            rc = run_engine(ref_c, inputs.x, batch, name)
        parity = ParityInfo(compare(rb, b), compare(rc, c))
        refs["eager_reference"] = rc
        classifier = loaded.family.is_classifier(loaded.model)
    else:
        parity = ParityInfo(None, None, "ONNX source: no eager model, parity tiers not "
                            "measurable")
        classifier = "logit" in name.lower()
    fid = _fidelity(b, c, classifier, eng, inputs, batch, tokens)
    dense_info = None
    if dense:
        d = dense_report(b, c, name)
        dense_info = DenseInfo(**{k: d[k] for k in DenseInfo.__dataclass_fields__})
    return name, parity, fid, dense_info, refs


def throughput(recipe: RecipeBase, loaded: Loaded, budget: Budget, eng: Compiled,
               xb: np.ndarray) -> ThroughputInfo:
    """Interleaved timing of both deployed engines (and eager torch) on one batch `xb`;
    engines that can bind inputs and outputs on the device do (`Runner.timed`)."""
    base, comp = eng.timed
    runners: dict[str, Callable[[], object]] = {
        "baseline": base.timed({base.input_names[0]: xb}),
        "compressed": comp.timed({comp.input_names[0]: xb}),
    }
    v = recipe.validate_
    eager: list[Runner] = []
    if loaded.family is not None and v.eager_throughput:
        pairs = [("eager", None)] + ([("eager_compressed", budget)] if budget.reducing_layers
                                     else [])
        for label, bud in pairs:
            rt = TorchRunner(_eager(loaded, bud))
            eager.append(rt)
            runners[label] = (lambda r: lambda: r.infer({"pixel_values": xb}))(rt)
    timings = measure_interleaved(runners, batch=loaded.batch, warmup=v.warmup,
                                  repeats=v.repeats, min_time_s=v.min_time_s)
    return throughput_info(timings, loaded.batch, budget.flops_ratio)


def probe(recipe: RecipeBase, loaded: Loaded, eng: Compiled, log: Log,
          compressed: Runner | None = None) -> AccuracyInfo:
    """The linear probe on the reference engines (or with `compressed` in place of the
    reference compressed engine: the deployed one, scored by the same probe)."""
    v = recipe.validate_
    assert v.dataset is not None
    pre = loaded.pre
    res = probe_report(v.dataset, v.probe_train, v.probe_test, v.seed, eng.baseline,
                       compressed or eng.compressed,
                       ModelInput(loaded.hw, pre.channels, pre.mean, pre.std,
                                  loaded.dataset_resize), loaded.batch, log)
    res["dataset"] = DatasetInfo(**res["dataset"])
    return AccuracyInfo(**res)


def deployment(eng: Compiled, inputs: Inputs, batch: int, classifier: bool,
               tokens: TokensOutInfo | None) -> DeploymentInfo | None:
    """The deployed compressed engine against the reference compressed engine on
    `inputs` (None when they are one engine): per sample, or per token / pooled for a
    token-sequence output as the fidelity tier does."""
    if eng.deployed is None:
        return None
    ref = run_engine(eng.compressed, inputs.x, batch)
    dep = run_engine(eng.deployed, inputs.x, batch)
    if tokens is not None and ref.ndim == 3:
        res: dict[str, object] = dict(token_fidelity(ref, dep))
    else:
        res = dict(fidelity(ref, dep, classifier and ref.ndim == 2))
    res.pop("top5_agreement", None)
    return DeploymentInfo(precision=eng.info.precision, **res)  # type: ignore[arg-type]


def task_tier(spec: str, fn: TaskFn, eng: Compiled, inputs: Inputs, batch: int) -> TaskInfo:
    """The user's task function on every output of both engines for `inputs`."""
    base = run_outputs(eng.baseline, inputs.x, batch)
    comp = run_outputs(eng.compressed, inputs.x, batch)
    return TaskInfo(spec, len(inputs.x), run_task(fn, spec, inputs.x, base, comp))


def validate(recipe: RecipeBase, loaded: Loaded, budget: Budget, eng: Compiled,
             inputs: Inputs, dense: bool, bench: bool, step: Log, log: Log,
             tokens: TokensOutInfo | None = None, task_fn: TaskFn | None = None
             ) -> Validation:
    """All tiers, in the order that keeps the timing honest (module docstring).
    `tokens`: the graph's token-sequence output, when it has one (per-token fidelity);
    `task_fn`: the recipe's validate.task, imported."""
    step("validating: parity, fidelity")
    name, parity, fid, dense_info, refs = tiers(loaded, budget, eng, inputs, dense, tokens)
    v = recipe.validate_
    task = None
    if task_fn is not None and v.task is not None:
        log(f"      task metric: {v.task}")
        task = task_tier(v.task, task_fn, eng, inputs, loaded.batch)
    timing = None
    if bench:
        step(f"timing (batch {loaded.batch}, interleaved, median of {v.repeats})")
        first = next(batches(inputs.x, loaded.batch))[0]
        timing = throughput(recipe, loaded, budget, eng, first)
    classifier = (loaded.family.is_classifier(loaded.model) if loaded.family is not None
                  else "logit" in name.lower())
    deployed = deployment(eng, inputs, loaded.batch, classifier, tokens)
    accuracy = None
    if v.dataset:
        step(f"linear probe on {v.dataset}")
        accuracy = probe(recipe, loaded, eng, log)
        if deployed is not None and eng.deployed is not None:
            log(f"      the deployed ({eng.info.precision}) compressed engine on the same probe")
            dep_acc = probe(recipe, loaded, eng, log, eng.deployed).compressed_acc
            deployed.accuracy = dep_acc
            deployed.accuracy_drop_points = accuracy.compressed_acc - dep_acc
    return Validation(name, inputs.info, parity, fid, dense_info, timing, accuracy, task,
                      deployed, refs)


__all__ = ["Inputs", "Validation", "select_inputs", "validate"]
