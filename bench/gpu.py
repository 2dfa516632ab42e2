"""`make bench-gpu`: issue 9's GPU table, measured side by side in one process.

On a machine whose onnxruntime offers the CUDA execution provider (onnxruntime-gpu),
ViT-B/16 at 224 px (random weights, fixed seed) with `tome-r16`:

1. the fp16 deployed engines (CUDA EP, I/O bound on the device, a CUDA graph when
   every node lands on the CUDA EP), compressed vs uncompressed, interleaved, at
   batch 8 and 64 — targets ≥ 1.5× and ≥ 1.8×;
2. the compressed fp16 engine against PyTorch eager fp16 (SDPA attention) of the
   uncompressed model on the same GPU at batch 64, interleaved — target ≥ 1.5×;
3. parity of the fp32 reference engine (TF32 off) against the eager reference at the
   same budget — target ≤ 1e-4;
4. the fp16 engine against the fp32 engine on the zoo's real dinov2-small with the
   photos: cosine min ≥ 0.99, and the Fashion-MNIST probe drop ≤ 0.5 points.

Without the CUDA EP it says so and exits 0: nothing is measured, nothing is claimed.
`--provider CPUExecutionProvider --tiny` runs the same code on the CPU with a small
ViT (how the test suite checks the script; its figures are not the GPU's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import _line
from vtc.backends.options import CPU, CUDA
from vtc.exporter._hf import quiet_transformers
from vtc.pipeline import Options, run
from vtc.recipe import load_recipe
from vtc.validate.bench import measure_interleaved, speedup_interval

Row = tuple[bool | None, str]


def _checkpoint(path: Path, tiny: bool) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig() if not tiny else ViTConfig(
        hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192,
        image_size=64, patch_size=8)
    cfg.num_labels = 1000 if not tiny else 10
    with quiet_transformers():
        ViTForImageClassification(cfg).eval().save_pretrained(path)
    return path


def _bundle(source: str, out: Path, batch: int, provider: str, repeats: int,
            extra: list[str] | None = None, recipe: str = "tome-r16") -> dict[str, Any]:
    sets = [f"backend.providers=[{provider}]", "backend.precision=fp16",
            f"validate.repeats={repeats}", "validate.warmup=10", "validate.samples=16",
            "validate.eager_throughput=false", *(extra or [])]
    if provider == CUDA:
        sets.append("validate.min_time_s=2")
    rep = run(Options(source=source, recipe=load_recipe(recipe, sets), out=out, batch=batch,
                      force=True, bench=True, log=lambda _m: None)).report
    return rep.to_dict()


def _eager_fp16(ckpt: Path, provider: str) -> Callable[[np.ndarray], Callable[[], object]]:
    """PyTorch eager, uncompressed, SDPA attention, fp16 on the GPU (fp32 on the CPU)."""
    import torch
    from transformers import ViTForImageClassification

    dev = "cuda" if provider == CUDA else "cpu"
    dtype = torch.float16 if dev == "cuda" else torch.float32
    with quiet_transformers():
        model = ViTForImageClassification.from_pretrained(
            str(ckpt), attn_implementation="sdpa", dtype=dtype)
        model = model.to(dev).eval()  # type: ignore[arg-type]

    def make(x: np.ndarray) -> Callable[[], object]:
        t = torch.from_numpy(x).to(dev, dtype)

        def call() -> object:
            with torch.inference_mode():
                y = model(pixel_values=t).logits
            if dev == "cuda":
                torch.cuda.synchronize()
            return y
        return call
    return make


def _engine_vs_eager(bundle: Path, rep: dict[str, Any], ckpt: Path, provider: str,
                     batch: int, repeats: int) -> tuple[float, float, float, float]:
    """Interleaved: the bundle's compressed fp16 engine vs eager fp16 uncompressed."""
    from vtc.backends.ort import OrtRunner

    e = rep["engine"]
    size = 224 if rep["budget"]["tokens_in"] == 197 else 64
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    eager = _eager_fp16(ckpt, provider)(x)
    with OrtRunner(bundle / e["file"], providers=[provider],
                   provider_options=e["provider_options"]) as rt:
        t = measure_interleaved({"eager": eager, "engine": rt.timed({rt.input_names[0]: x})},
                                batch=batch, warmup=10, repeats=repeats)
    ci = speedup_interval(t["eager"], t["engine"])
    return t["engine"].img_per_s, t["eager"].img_per_s, ci.estimate, ci.low


TARGETS = ((8, 1.5), (64, 1.8))  # batch → compressed/uncompressed speedup target


def measure(tmp: Path, provider: str, tiny: bool, repeats: int,
            batches: tuple[tuple[int, float], ...] = TARGETS) -> list[Row]:
    ckpt = _checkpoint(tmp / "vit", tiny)
    rows: list[Row] = []
    name = "tiny ViT (CPU check of the script)" if tiny else "ViT-B/16 224 px"
    last = batches[-1][0]
    for batch, target in batches:
        out = tmp / f"b{batch}"
        rep = _bundle(str(ckpt), out, batch, provider, repeats)
        th, e = rep["throughput"], rep["engine"]
        ci = th["speedup_ci"]
        rows.append((th["speedup"] >= target,
                     f"{name} tome-r16 batch {batch}, fp16, {provider}, CUDA graph "
                     f"{'on' if e['cuda_graph'] else 'off'} ({len(e['fallback'])} nodes off "
                     f"the CUDA EP): {th['baseline_ips']:.0f} → {th['compressed_ips']:.0f} img/s, "
                     f"speedup {th['speedup']:.2f}× (paired {ci['estimate']:.2f}× "
                     f"[{ci['low']:.2f}, {ci['high']:.2f}]) [target ≥ {target}×]"))
        par = rep["parity"]["engine"]["max_abs_diff"]
        rows.append((par <= 1e-4, f"  parity, fp32 reference engine (TF32 off) vs eager at the "
                     f"same budget, batch {batch}: max |Δ| {par:.1e} [target ≤ 1e-4]"))
        d = rep["deployment"]
        rows.append((None, f"  fp16 vs fp32 engine (synthetic inputs, random weights): cosine "
                     f"min {d['cosine_min']:.5f}, top-1 agreement {d['top1_agreement']}"))
        if batch == last:
            eng, eag, est, low = _engine_vs_eager(out, rep, ckpt, provider, batch, repeats)
            eager = "fp16 SDPA" if provider == CUDA else "fp32 SDPA on the CPU"
            rows.append((est >= 1.5, f"  compressed fp16 engine {eng:.0f} img/s vs PyTorch eager "
                         f"{eager} uncompressed {eag:.0f} img/s, batch {batch}: {est:.2f}× "
                         f"(interval low {low:.2f}) [target ≥ 1.5×]"))
    return rows


def dinov2(tmp: Path, provider: str, repeats: int) -> list[Row]:
    """fp16 vs fp32 on real weights: the photos' cosine and the probe drop."""
    rep = _bundle("dinov2-small", tmp / "dinov2", 8, provider, repeats,
                  ["validate.dataset=fashion-mnist"], recipe="dinov2-small")
    d = rep["deployment"]
    return [(d["cosine_min"] >= 0.99, f"dinov2-small (real weights) fp16 vs fp32 engine on "
             f"{rep['inputs']['kind']}: cosine min {d['cosine_min']:.5f} [target ≥ 0.99]"),
            (d["accuracy_drop_points"] <= 0.5, f"  Fashion-MNIST probe: fp16 engine "
             f"{d['accuracy']:.2f} %, drop {d['accuracy_drop_points']:.2f} points vs the fp32 "
             "engine [target ≤ 0.5]")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default=CUDA, choices=[CUDA, CPU])
    ap.add_argument("--tiny", action="store_true", help="a small ViT (checks the script)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--no-real", action="store_true", help="skip the dinov2-small rows")
    ap.add_argument("--batch", type=int, action="append",
                    help="time this batch only (target 1.5×); repeatable (default: 8 and 64)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    if args.provider not in ort.get_available_providers():
        print(f"bench-gpu: onnxruntime {ort.__version__} offers "
              f"{', '.join(ort.get_available_providers())}, not {args.provider}: nothing "
              "measured (on a CUDA machine: make bench-gpu ORT=onnxruntime-gpu)")
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vtc-bench-gpu-") as d:
        batches = tuple((b, 1.5) for b in args.batch) if args.batch else TARGETS
        rows = measure(Path(d), args.provider, args.tiny, args.repeats, batches)
        if not args.no_real:
            rows += dinov2(Path(d), args.provider, args.repeats)
    for ok, text in rows:
        print(_line(ok, text))
    met = [ok for ok, _ in rows if ok is not None]
    print(f"bench-gpu: {sum(met)}/{len(met)} targets met in {time.perf_counter() - t0:.0f} s")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
