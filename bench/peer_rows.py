"""The rows of the peer table (bench/peers.py): every engine of one model, loaded at once.

One model and one recipe give twelve runners, all built by vtc's own stages (load →
export → compress → compile, as `vtc-export` builds them), none by hand:

    ORT fp32 / int8 ×3 / OpenVINO, uncompressed     ─┐ compile_engines(baseline, model)
    vtc + ORT fp32 / int8 ×3 / OpenVINO, compressed ─┘

ORT int8 comes three times: static as `backend.precision: int8` builds it by default
(calibrated, the attention projections fp32: `backend.int8_keep_fp32`); static with
every weight MatMul int8 (`int8_keep_fp32: []`, what `quantize_static` does out of the
box); and dynamic with every weight MatMul int8 (`int8_activations: dynamic`, what
`quantize_dynamic` — optimum's default for transformers on the CPU — does). The static
ones are calibrated on the same images; the reference engines are the fp32 ones.
    PyTorch eager (SDPA)          the HF model as vtc loads it (attn_implementation="sdpa")
    PyTorch eager + ToMe patch    tests/reference/tome_reference.py (the paper's patch,
                                  re-implemented; attention computed as the patch does)

The ORT engines get vtc's attention fusion on both graphs (as the compile stage always
does): the uncompressed ORT rows are therefore faster than a plain optimum-cli export
in ONNX Runtime, the stronger peer. Every engine and torch run with the same thread
count. Images: [B, 3, H, W] float32, normalised as the model's preprocessor says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Log = Callable[[str], None]

# key: (label, compressed, engine, precision) in the column order
ROWS: dict[str, tuple[str, bool, str, str]] = {
    "ort-fp32": ("ORT fp32 (uncompressed)", False, "ort", "fp32"),
    "ort-int8": ("ORT int8, attention fp32 (uncompressed)", False, "ort", "int8"),
    "ort-int8-all": ("ORT int8, every MatMul (uncompressed)", False, "ort", "int8"),
    "ort-int8-dyn": ("ORT int8 dynamic, every MatMul (uncompressed)", False, "ort", "int8"),
    "openvino": ("OpenVINO fp32 (uncompressed)", False, "openvino", "fp32"),
    "eager-sdpa": ("PyTorch eager, SDPA (uncompressed)", False, "torch", "fp32"),
    "eager-tome": ("PyTorch eager + ToMe paper's patch", True, "torch", "fp32"),
    "vtc-ort-fp32": ("vtc + ORT fp32", True, "ort", "fp32"),
    "vtc-ort-int8": ("vtc + ORT int8, attention fp32 (default)", True, "ort", "int8"),
    "vtc-ort-int8-all": ("vtc + ORT int8, every MatMul", True, "ort", "int8"),
    "vtc-ort-int8-dyn": ("vtc + ORT int8 dynamic, every MatMul", True, "ort", "int8"),
    "vtc-openvino": ("vtc + OpenVINO fp32", True, "openvino", "fp32"),
}
REFERENCE = "ort-fp32"  # outputs and the probe's classifier are compared with this row
# the ORT int8 configurations, by row-key suffix: (what, recipe settings beyond int8)
INT8: dict[str, tuple[str, list[str]]] = {
    "": ("int8 static, attention projections fp32: the default", []),
    "-all": ("int8 static, every weight MatMul int8", ["backend.int8_keep_fp32=[]"]),
    "-dyn": ("int8 dynamic, every weight MatMul int8",
             ["backend.int8_keep_fp32=[]", "backend.int8_activations=dynamic"]),
}


@dataclass
class Built:
    """One model's loaded rows. `runners`: key → a runner (`input_names`, `infer`);
    `timed`: key → a zero-argument call running one batch of `x` (ORT: I/O bound);
    `x`: the timing batch [B, 3, H, W]; `meta`: what the table header says."""

    runners: dict[str, Any]
    timed: dict[str, Callable[[], object]]
    x: np.ndarray
    loaded: Any
    meta: dict[str, Any] = field(default_factory=dict)


def _tome_section(recipe: Any) -> dict[str, Any]:
    """The recipe's ToMe settings, refused unless the paper's patch can run the same r."""
    methods, sec = recipe.to_dict()["method"], recipe.to_dict()["tome"]
    if methods != ["tome"] or sec["r"] is None or sec["protected"] != "inside":
        raise ValueError(f"the peer table compares ToMe at a given r with the paper's split "
                         f"(protected: inside); recipe {recipe.name} has method {methods}, "
                         f"r {sec['r']}, protected {sec['protected']}")
    return sec


def _torch_rows(loaded: Any, recipe: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two eager rows (TorchRunner) and what they are."""
    from tests.reference.tome_reference import tome_forward
    from vtc.backends.torch_eager import TorchRunner

    family, model = loaded.family, loaded.model
    attn = getattr(model.config, "_attn_implementation", None)
    if attn != "sdpa":
        raise RuntimeError(f"the eager model loaded with attention {attn!r}, not sdpa")
    names = family.output_names(model)
    sec = _tome_section(recipe)
    r, prop = sec["r"], bool(sec["proportional_attention"])

    def sdpa(t: Any) -> dict[str, Any]:
        return dict(zip(names, family.hf_forward(model, t), strict=True))

    def tome(t: Any) -> dict[str, Any]:
        return tome_forward(model, t, r=r, prop_attn=prop)

    return ({"eager-sdpa": TorchRunner(sdpa), "eager-tome": TorchRunner(tome)},
            {"attention": attn, "tome_r": r, "proportional_attention": prop})


@contextmanager
def build(source: str, recipe_name: str, sets: list[str], tmp: Path, batch: int,
          threads: int, log: Log) -> Iterator[Built]:
    """Build and load every row of `source` compressed with `recipe_name` (+ `sets`),
    engines at `batch` with `threads` threads; closed when the block ends."""
    from vtc.data.images import batches
    from vtc.pipeline import check_engine, compress_graph
    from vtc.recipe import load_recipe
    from vtc.source import resolve
    from vtc.stages.compile import compile_engines
    from vtc.stages.export import export
    from vtc.stages.load import load
    from vtc.stages.validate import select_inputs

    common = [*sets, f"backend.threads={threads}"]
    rec_int8 = {suffix: load_recipe(recipe_name, [*common, "backend.precision=int8", *extra])
                for suffix, (_what, extra) in INT8.items()}
    rec_ort = rec_int8[""]  # the default int8: its compile also gives the fp32 engines
    rec_ov = load_recipe(recipe_name, [*common, "backend.kind=openvino"])
    for rec in (*rec_int8.values(), rec_ov):
        check_engine(rec)
    src = resolve(source)
    log(f"      loading {source} ({src.model_type})")
    loaded = load(src, rec_ort, batch)
    budget = rec_ort.budget(loaded.geometry)
    tmp.mkdir(parents=True, exist_ok=True)
    exported = export(loaded, rec_ort, tmp, log)
    log(f"      rewriting: {budget.label}, tokens {budget.tokens_in} → {budget.tokens_out}")
    comp = compress_graph(exported, budget, rec_ort, loaded, tmp, log)
    inputs = select_inputs(rec_ort, None, loaded, dense=False)  # also the int8 calibration
    with ExitStack() as stack:
        int8: dict[str, Any] = {}
        for suffix, (what, _extra) in INT8.items():
            log(f"      compiling ORT fp32 + int8 engines ({what})")
            (tmp / f"ort{suffix}").mkdir(exist_ok=True)
            int8[suffix] = c = stack.enter_context(compile_engines(
                rec_int8[suffix], exported.baseline, comp.path, tmp / f"ort{suffix}",
                pre=loaded.pre, calibration=inputs.x))  # dynamic: calibration unused
            assert c.deployed is not None and c.deployed_baseline is not None
        log("      compiling OpenVINO engines")
        (tmp / "ov").mkdir(exist_ok=True)
        ov = stack.enter_context(compile_engines(rec_ov, exported.baseline, comp.path,
                                                 tmp / "ov", pre=loaded.pre))
        ort = int8[""]
        engines = {"ort-fp32": ort.baseline, "openvino": ov.baseline,
                   "vtc-ort-fp32": ort.compressed, "vtc-openvino": ov.compressed}
        for suffix, c in int8.items():
            engines[f"ort-int8{suffix}"] = c.deployed_baseline
            engines[f"vtc-ort-int8{suffix}"] = c.deployed
        eager, eager_meta = _torch_rows(loaded, rec_ort)
        for rt in eager.values():
            stack.enter_context(rt)
        runners = {k: (engines | eager)[k] for k in ROWS}
        xb = np.ascontiguousarray(next(batches(inputs.x, batch))[0])  # padded to `batch`
        timed = {k: (rt.timed({rt.input_names[0]: xb}) if k in engines
                     else (lambda r: lambda: r.infer({"pixel_values": xb}))(rt))
                 for k, rt in runners.items()}
        meta = {"source": source, "recipe": recipe_name, "batch": batch, "threads": threads,
                "tokens_in": budget.tokens_in, "tokens_out": budget.tokens_out,
                "flops_ratio": budget.flops_ratio, "inputs": inputs.info.kind,
                "ort_fused": ort.fusions.compressed if ort.fusions else None,
                **{f"int8{suffix.replace('-', '_')}_conversion": dict(c.info.conversion)
                   for suffix, c in int8.items()}, **eager_meta}
        yield Built(runners, timed, xb, loaded, meta)


def outputs(built: Built) -> dict[str, np.ndarray]:
    """Every row's first output on the timing batch (`[B, ...]`)."""
    res = {}
    for k, rt in built.runners.items():
        out = rt.infer({rt.input_names[0]: built.x})
        res[k] = np.asarray(next(iter(out.values())))
    return res


def probe_features(built: Built, dataset: str, n_train: int, n_test: int, seed: int,
                   log: Log) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
    """(split, train features of the REFERENCE row [n_train, C], test features of
    every row [n_test, C]), pooled as vtc's probe pools them."""
    from vtc import data
    from vtc.validate.probe import pool
    from vtc.validate.tasks import ModelInput, run_engine

    loaded = built.loaded
    pre, batch = loaded.pre, built.meta["batch"]
    mi = ModelInput(loaded.hw, pre.channels, pre.mean, pre.std, loaded.dataset_resize)
    split = data.load(dataset, n_train=n_train, n_test=n_test, seed=seed)

    def feats(keys: list[str], images: np.ndarray, what: str) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        chunk = batch * max(1, 128 // batch)
        for start in range(0, len(images), chunk):
            x = mi.convert(images[start:start + chunk])
            for k in keys:
                parts[k].append(pool(run_engine(built.runners[k], x, batch)))
            log(f"      {what}: {min(start + chunk, len(images))}/{len(images)} images")
        return {k: np.concatenate(v) for k, v in parts.items()}

    train = feats([REFERENCE], split.train_images, f"{dataset} train features")[REFERENCE]
    test = feats(list(built.runners), split.test_images,
                 f"{dataset} test features, {len(built.runners)} rows")
    return split, train, test
