"""7. `vtc check` against noise, with a planted slowdown (issue target).

One bundle (random-weight ViT-S/16, 224 px, batch 8, tome-r13) is built and its
report stored as the baseline. A slowed copy of its compressed graph gets one
extra MatMul per block on a side output (ORT must compute it; the main output is
unchanged), sized so that the compressed engine's latency grows by ≈ 1/0.85, i.e.
the speedup drops ≈ 15 %; the actual drop is measured and printed. Then, ten
times, alternating: the unchanged bundle is re-timed (its engines are
byte-identical to a rebuild's: tests/check/test_ci_script.py) and the slowed one
is timed, exactly as `vtc-export` times (the compile stage's engines, their
I/O-bound timing calls, `measure_interleaved`, the same repeats), each into a copy
of the baseline report, and `vtc.check.compare` judges it against the baseline
with the default tolerances.

Targets: the slowdown is caught in ≥ 9/10 runs; the unchanged bundle passes in
≥ 9/10 runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vtc.check.compare import compare
from vtc.check.read import Side
from vtc.passes.graph import find_blocks
from vtc.passes.model_io import load as load_model
from vtc.pipeline import Options, run
from vtc.recipe import RecipeBase, load_recipe
from vtc.report import Report
from vtc.stages.compile import compile_engines
from vtc.validate.bench import measure_interleaved, throughput_info

TARGET_DROP = 0.15
RUNS = 10


def _plant(model_path: Path, out: Path, macs_per_image: float, batch: int) -> None:
    """Copy of `model_path` with a side MatMul `[B, N, D] x [D, k]` on each block's
    input, each feeding an extra graph output; `macs_per_image` in total."""
    model = load_model(model_path, batch, None)
    blocks = find_blocks(model)
    m = onnx.load(str(model_path))
    rng = np.random.default_rng(0)
    per_block = macs_per_image / len(blocks)
    for b in blocks:
        k = max(8, int(per_block / (b.tokens * b.width)))
        w = numpy_helper.from_array(rng.standard_normal((b.width, k)).astype(np.float32),
                                    f"planted_w{b.index}")
        m.graph.initializer.append(w)
        name = f"planted_{b.index}"
        assert b.x_in.name is not None
        m.graph.node.append(helper.make_node("MatMul", [b.x_in.name, w.name], [name],
                                             name=f"planted_matmul_{b.index}"))
        m.graph.output.append(helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, [batch, b.tokens, k]))
    onnx.save(m, str(out))


def _time(bundle: Path, model: Path, batch: int, repeats: int, tag: str,
          recipe: RecipeBase) -> Report:
    """Time baseline.onnx against `model` as the pipeline does (the compile stage's
    engines: fused attention, I/O-bound timing calls); a report copy with it."""
    base = Report.from_dict(json.loads((bundle / "report.json").read_text()))
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    work = bundle.parent / f"engines-{tag}"
    work.mkdir(exist_ok=True)
    with compile_engines(recipe, bundle / "baseline.onnx", model, work) as eng:
        rb, rc = eng.timed
        timings = measure_interleaved({"baseline": rb.timed({rb.input_names[0]: x}),
                                       "compressed": rc.timed({rc.input_names[0]: x})},
                                      batch=batch, warmup=3, repeats=repeats)
    shutil.rmtree(work, ignore_errors=True)
    tp = throughput_info(timings, batch, base.budget.flops_ratio)
    return dataclasses.replace(base, throughput=tp)


def check_noise(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    from bench.run import save_checkpoint

    ckpt = save_checkpoint("vit", tmp / "vit-s16", hidden_size=384, num_hidden_layers=12,
                           num_attention_heads=6, intermediate_size=1536, image_size=224,
                           patch_size=16)
    bundle, batch = tmp / "check-base", 8
    rec = load_recipe("tome-r16", ["tome.r=13", f"validate.repeats={repeats}",
                                   "validate.eager_throughput=false", "validate.samples=8"])
    res = run(Options(source=str(ckpt), recipe=rec, out=bundle, batch=batch, force=True,
                      log=lambda _m: None))
    baseline = res.encoder
    # latency x 1/(1 - drop) on the compressed graph: extra MACs ≈ drop/(1 - drop) of its
    # own, then one correction from a calibration timing of the slowed graph
    extra = baseline.budget.flops * TARGET_DROP / (1 - TARGET_DROP)
    slowed = tmp / "slowed.onnx"
    for _ in range(2):
        _plant(bundle / "model.onnx", slowed, extra, batch)
        cal = _time(bundle, slowed, batch, 2 * repeats, "cal", rec).throughput
        assert cal is not None and baseline.throughput is not None
        ref = _time(bundle, bundle / "model.onnx", batch, 2 * repeats, "ref", rec).throughput
        assert ref is not None
        got = 1 - cal.speedup_ci.estimate / ref.speedup_ci.estimate  # this planting's drop
        extra *= TARGET_DROP / max(got, 0.02)
    same_v: list[str] = []
    slow_v: list[str] = []
    ratios: list[float] = []
    for i in range(RUNS):
        for kind, model in (("same", bundle / "model.onnx"), ("slow", slowed)):
            now = _time(bundle, model, batch, repeats, f"{kind}{i}", rec)
            cmp = compare(Side(baseline, "baseline"), Side(now, kind))
            row = next(r for r in cmp.rows if r.metric == "throughput.speedup")
            (same_v if kind == "same" else slow_v).append(row.verdict)
            print(f"  run {i} {kind}: {row.now}, change {row.change}: {row.verdict}",
                  file=sys.stderr, flush=True)
            if kind == "slow":
                assert now.throughput is not None and baseline.throughput is not None
                ratios.append(now.throughput.speedup_ci.estimate
                              / baseline.throughput.speedup_ci.estimate)
    caught = sum(v == "FAIL" for v in slow_v)
    passed = sum(v == "pass" for v in same_v)
    drop = 1 - float(np.median(ratios))
    tp = baseline.throughput
    assert tp is not None
    head = (f"vtc check vs a stored baseline (ViT-S/16 224px batch 8 tome-r13, paired speedup "
            f"{tp.speedup_ci.estimate:.2f}× [{tp.speedup_ci.low:.2f}, {tp.speedup_ci.high:.2f}], "
            f"{repeats} rounds per run, default max_speedup_drop 0.05)")
    return [(caught >= 9, f"{head}: planted slowdown (measured speedup drop {drop:.1%}, "
                          f"median of {RUNS}) caught in {caught}/{RUNS} runs [target ≥ 9/10]"),
            (passed >= 9, f"{head}: unchanged bundle passes in {passed}/{RUNS} runs "
                          "[target ≥ 9/10]")]
