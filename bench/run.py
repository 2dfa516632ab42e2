"""`make bench`: the issue's targets, measured side by side in one run.

1. ViT-B/16, 224 px, batch 8, tome-r16: compressed ORT engine vs the
   uncompressed ORT engine, timed interleaved in one process (speedup ≥ 1.95,
   efficiency = speedup / FLOPs ratio ≥ 0.97: issue 20); tome-r8, pitome-r16,
   evit-keep70 and a dynamic-batch tome-r16 for information.
2. Engine parity (compressed engine vs eager reference at the same budget,
   fp32) ≤ 1e-4 on every family, for tome-r8, pitome-r8 and evit-keep70.
3. A ViT exported by the TorchScript exporter, given as an .onnx SOURCE,
   compresses with the same recipes and agrees with the engine built from the
   HF directory of the same weights (output cosine ≥ 0.999).
4. vtc's ToMe and PiToMe engines against the published algorithms (independent
   implementations in tests/reference) on a seeded ViT-S/16: ≤ 1e-4; vtc's PyramidDrop
   decoder against the authors' algorithm on a seeded LLaVA: ≤ 1e-4
   (bench/published.py).
7. `vtc check` with a planted 15 % slowdown: caught in ≥ 9/10 runs, an unchanged
   bundle passes in ≥ 9/10 (bench/check_noise.py). 8. the real dinov2-small bundle
   built twice passes `vtc check` (bench/real.py). 9. a third-party
   nn.MultiheadAttention encoder (1×128×512, no CLS) at FLOPs ratio 2.0: ≥ 1.9× with
   proportional attention off, ≥ 1.85× with it on (bench/third_party.py). 0. start-up:
   `vtc --help` and `vtc lint-trt FILE` < 1.5 s, median of 5 (bench/startup.py; run
   first, whatever --only says). 10. the OpenVINO
   engine (`backend.kind: openvino`): parity on every family, ViT-B/16 tome-r16 ≥ 1.8×
   OpenVINO uncompressed (bench/openvino.py). 11. int8 (`backend.precision: int8`):
   ViT-B/16 tome-r16 ≥ 1.8× int8 uncompressed, and int8/fp32 for information
   (bench/int8.py). 12. Qwen2.5-VL: tiny parity per shipped recipe, and Qwen2.5-VL-3B
   shapes 256 → 64 visual tokens, LM prefill ≤ 0.40× the uncut genai bundle
   (bench/vlm_qwen.py). 13. peers: one table per model (ViT-B/16 tome-r16, dinov2-small
   r=16; batch 8): ORT fp32/int8 (int8 three times: static with the attention
   projections fp32, the default; static every MatMul; dynamic every MatMul), OpenVINO
   and PyTorch eager (SDPA) uncompressed, eager PyTorch with the ToMe paper's patch, vtc
   + ORT fp32/int8 (the three int8 kinds) and vtc + OpenVINO, all
   timed interleaved in one process, each with img/s, the paired ratio over the fastest
   uncompressed peer and (dinov2-small) the Fashion-MNIST probe; the fastest vtc engine
   ≥ 1.8× that peer on ViT-B/16, int8 ≥ 1.3× fp32 vtc, dinov2-small vtc int8 probe drop
   ≤ 1.0 pt (bench/peers.py; tables in out/bench-peers/peers.md and .json).

Sections 1-4 use random weights (fixed seed): speed and parity do not depend
on them. Sections 5-6 (bench/real.py) use the zoo's real dinov2-small weights
and Fashion-MNIST (`make data`); section 13 uses both. Prints one line per target and
exits 1 if any is missed. `--only real` (or `synthetic`) runs one half, `--only peers`
section 13 alone (both halves leave it out), `--only NAME` any one section.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vtc.exporter._hf import quiet_transformers
from vtc.pipeline import Options, run
from vtc.recipe import load_recipe

FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # family: (HF class name, config kwargs) — 12 blocks so evit-keep70's layers 3, 6, 9 exist
    "vit": ("ViTForImageClassification", dict(num_labels=10)),
    "deit": ("DeiTForImageClassificationWithTeacher", dict(num_labels=10)),
    "dinov2": ("Dinov2Model", dict()),
    "clip": ("CLIPVisionModel", dict()),
    "siglip": ("SiglipVisionModel", dict()),
}
_SMALL = dict(hidden_size=96, num_hidden_layers=12, num_attention_heads=4,
              intermediate_size=192, image_size=64, patch_size=8)


def _config(family: str, **overrides: Any) -> Any:
    import transformers as tf

    cls_name, extra = FAMILY_CONFIGS[family]
    cfg_cls = {"vit": tf.ViTConfig, "deit": tf.DeiTConfig, "dinov2": tf.Dinov2Config,
               "clip": tf.CLIPVisionConfig, "siglip": tf.SiglipVisionConfig}[family]
    return getattr(tf, cls_name), cfg_cls(**{**_SMALL, **extra, **overrides})


def save_checkpoint(family: str, path: Path, seed: int = 0, **overrides: Any) -> Path:
    """A seeded `family` model of the small shape (`_SMALL`, `overrides` on top: given to
    the config's constructor, so settings derived from them, such as DINOv2's stage
    names, follow), non-zero biases, saved at `path` as safetensors."""
    import torch

    cls, cfg = _config(family, **overrides)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # non-zero biases, so that parity sees real arithmetic
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    with quiet_transformers():
        model.save_pretrained(path, safe_serialization=True)
    return path


def _quiet(msg: str) -> None:
    pass


def _run(source: Path, recipe: str, out: Path, bench: bool, sets: list[str] | None = None,
         batch: int = 8) -> dict[str, Any]:
    rec = load_recipe(recipe, sets or [])
    res = run(Options(source=str(source), recipe=rec, out=out, batch=batch, force=True,
                      bench=bench, log=_quiet))
    return res.report.to_dict()


def _line(ok: bool | None, text: str) -> str:
    return f"{'info' if ok is None else 'PASS' if ok else 'FAIL'}  {text}"


def _speed_text(recipe: str, rep: dict[str, Any]) -> str:
    th, b = rep["throughput"], rep["budget"]
    lost = rep["fusions"].get("lost") or {}
    return (f"ViT-B/16 224px batch 8 {recipe}: tokens {b['tokens_in']}→{b['tokens_out']}, "
            f"FLOPs ratio {b['flops_ratio']:.2f}, ORT {th['baseline_ips']:.1f} → "
            f"{th['compressed_ips']:.1f} img/s, speedup {th['speedup']:.2f}×, efficiency "
            f"{th['efficiency']:.2f}; eager torch {th['eager_ips']:.1f} img/s uncompressed, "
            f"{th['eager_compressed_ips']:.1f} img/s with the same budget; "
            f"ORT fused ops lost: {lost or 'none'}; MultiHeadAttention "
            f"{rep['fusions']['baseline'].get('MultiHeadAttention', 0)}/"
            f"{rep['fusions']['compressed'].get('MultiHeadAttention', 0)}; engine nodes "
            f"{rep['engine']['nodes'].get('baseline')} → "
            f"{rep['engine']['nodes'].get('compressed')}; {formulations(rep)}")


def formulations(rep: dict[str, Any]) -> str:
    """Each reduction site's formulation, e.g. `sites: gather ×10 (blocks 0-9), compact ×2
    (blocks 10-11), nodes per site 33-40`."""
    sites = rep["graph"].get("reductions") or []
    if not sites:
        return "sites: none"
    parts = []
    for f in ("gather", "compact"):
        blocks = [s["block"] for s in sites if s["formulation"] == f]
        if blocks:
            parts.append(f"{f} ×{len(blocks)} (blocks {', '.join(map(str, blocks))})")
    nodes = [s["nodes"] for s in sites]
    return f"sites: {'; '.join(parts)}, nodes per site {min(nodes)}-{max(nodes)}"


def vit_b16(ckpt: Path) -> Path:
    """A ViT-B/16 (224 px, 1,000 classes) with random weights (seed 0), saved at `ckpt`."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig()  # ViT-B/16 at 224 px
    cfg.num_labels = 1000
    with quiet_transformers():
        ViTForImageClassification(cfg).eval().save_pretrained(ckpt)
    return ckpt


def speed(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    """ViT-B/16: the tome-r16 target; tome-r8, evit-keep70 and a dynamic-batch
    tome-r16 engine for information."""
    ckpt = vit_b16(tmp / "vit-b16")
    sets = [f"validate.repeats={repeats}", "validate.samples=8", "validate.warmup=3"]
    lines: list[tuple[bool | None, str]] = []
    for recipe, extra in (("tome-r16", []), ("tome-r8", []), ("pitome-r16", []),
                          ("evit-keep70", []), ("tome-r16", ["export.dynamic_batch=true"])):
        rep = _run(ckpt, recipe, tmp / f"b16-{recipe}-{len(extra)}", True, sets + extra)
        th = rep["throughput"]
        text = _speed_text(recipe + (" (dynamic batch)" if extra else ""), rep)
        if recipe == "tome-r16" and not extra:
            ok = th["speedup"] >= 1.95 and th["efficiency"] >= 0.97
            lines.append((ok, text + " [targets: speedup ≥ 1.95, efficiency ≥ 0.97]"))
        else:
            lines.append((None, text))
    return lines


def parity(tmp: Path) -> list[tuple[bool, str]]:
    lines = []
    for fam in FAMILY_CONFIGS:
        ckpt = save_checkpoint(fam, tmp / f"ckpt-{fam}")
        for recipe in ("tome-r8", "pitome-r8", "evit-keep70"):
            # SigLIP has no CLS token: EViT ranks by the mean attention received
            sets = ["evit.score=mean"] if recipe.startswith("evit") and fam == "siglip" else []
            rep = _run(ckpt, recipe, tmp / f"p-{fam}-{recipe}", False, sets, batch=4)
            d = rep["parity"]["engine"]["max_abs_diff"]
            e = rep["parity"]["export"]["max_abs_diff"]
            b = rep["budget"]
            lines.append((d <= 1e-4, f"engine parity {fam:<7} {recipe:<12} max|Δ| {d:.2e} "
                          f"(≤ 1e-4; export {e:.2e}; tokens {b['tokens_in']}→{b['tokens_out']})"))
    return lines


def torchscript_source(tmp: Path) -> list[tuple[bool, str]]:
    import torch
    from transformers import ViTForImageClassification

    ckpt = tmp / "ckpt-vit"
    with quiet_transformers():
        model = ViTForImageClassification.from_pretrained(ckpt).eval()

    class _W(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x).logits

    ts = tmp / "vit_torchscript.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_W(), (torch.randn(4, 3, 64, 64),), str(ts), dynamo=False,
                          opset_version=17, input_names=["pixel_values"],
                          output_names=["logits"])
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64)).astype(np.float32)
    lines = []
    for recipe in ("tome-r8", "evit-keep70"):
        _run(ts, recipe, tmp / f"ts-{recipe}", False, batch=4)
        outs = []
        for d in (tmp / f"ts-{recipe}", tmp / f"p-vit-{recipe}"):
            s = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
            outs.append(s.run(None, {s.get_inputs()[0].name: x})[0])
        a, b = outs
        cos = float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) *
                                                np.linalg.norm(b, axis=1))))
        lines.append((cos >= 0.999, f"TorchScript .onnx source vs HF dir, {recipe:<12} "
                      f"min output cosine {cos:.6f} (≥ 0.999), max|Δ| "
                      f"{float(np.abs(a - b).max()):.2e}"))
    return lines


# `--only NAME`: one section (or a half) of the run, start-up always first
SECTIONS = ("parity", "torchscript", "published", "speed", "openvino", "int8", "check-noise",
            "third-party", "vlm", "vlm-qwen", "dinov2", "dinov2-self-check", "focus", "peers")
HALVES = {"synthetic": SECTIONS[:10], "real": SECTIONS[10:13], "startup": ()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--only", choices=[*HALVES, *SECTIONS], default=None,
                    help="run only sections 1-4, 7, 9-12 (synthetic), 5-6 (real weights), 0 "
                    "(start-up) or one section by name, e.g. peers (13, the peer table); "
                    "start-up runs first either way")
    args = ap.parse_args()
    want = set(SECTIONS if args.only is None else HALVES.get(args.only, (args.only,)))
    results: list[tuple[bool | None, str]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vtc-bench-") as d:
        tmp = Path(d)
        from bench.startup import startup

        print("[bench] start-up: vtc --help, vtc lint-trt (5 runs each) ...", flush=True)
        results += startup(tmp)
        if "parity" in want or "torchscript" in want:
            print("[bench] engine parity on every family (tiny models, 12 blocks) ...",
                  flush=True)
            parity_lines = parity(tmp)  # torchscript compares with these bundles
            results += parity_lines if "parity" in want else []
        if "torchscript" in want:
            print("[bench] TorchScript-exported .onnx source ...", flush=True)
            results += torchscript_source(tmp)
        if "published" in want:
            from bench.published import published, pyramid_published

            print("[bench] ToMe and PiToMe vs the published algorithms (ViT-S/16) ...",
                  flush=True)
            results += published(tmp)
            print("[bench] PyramidDrop vs the authors' algorithm (seeded LLaVA) ...",
                  flush=True)
            results += pyramid_published(tmp)
        if "speed" in want:
            print("[bench] ViT-B/16 throughput, 4 engines (several minutes) ...", flush=True)
            results += speed(tmp, args.repeats)
        if "openvino" in want:
            from bench.openvino import openvino

            print("[bench] OpenVINO engine: parity on every family, ViT-B/16 tome-r16 "
                  "throughput (minutes) ...", flush=True)
            results += openvino(tmp, args.repeats)
        if "int8" in want:
            from bench.int8 import int8

            print("[bench] int8 engines: ViT-B/16 tome-r16, int8 and fp32 (minutes) ...",
                  flush=True)
            results += int8(tmp, args.repeats, ["default"])
        if "check-noise" in want:
            from bench.check_noise import check_noise

            print("[bench] vtc check: planted slowdown vs unchanged, 10 runs each ...",
                  flush=True)
            results += check_noise(tmp, args.repeats)
        if "third-party" in want:
            from bench.third_party import third_party_encoder

            print("[bench] third-party nn.MultiheadAttention encoder, 1x128x512 ...",
                  flush=True)
            results += third_party_encoder(tmp, args.repeats)
        if "vlm" in want:
            from bench.vlm import vlm

            print("[bench] LLaVA: tiny parity per recipe; LLaVA-1.5 shapes, prefill latency "
                  "(several minutes) ...", flush=True)
            results += vlm(tmp, rounds=5)
        if "vlm-qwen" in want:
            from bench.vlm_qwen import qwen

            print("[bench] Qwen2.5-VL: tiny parity per recipe; Qwen2.5-VL-3B shapes, prefill "
                  "latency (tens of minutes: the 3B tower runs about 10 s per image) ...",
                  flush=True)
            results += qwen(tmp, rounds=3)
        if want & {"dinov2", "dinov2-self-check", "focus"}:
            from bench.real import dinov2_probe, dinov2_self_check, focus_unmerge

            if "dinov2" in want:
                print("[bench] dinov2-small: Fashion-MNIST probe + throughput (minutes) ...",
                      flush=True)
                results += dinov2_probe(tmp, args.repeats)
            if "dinov2-self-check" in want:
                print("[bench] dinov2-small built twice, vtc check run 2 vs run 1 ...",
                      flush=True)
                results += dinov2_self_check(tmp, args.repeats)
            if "focus" in want:
                print("[bench] third-party vit_s_focus.onnx: unmerge + saliency fidelity ...",
                      flush=True)
                results += focus_unmerge(tmp, args.repeats)
        if "peers" in want:
            from bench.peers import peers

            print("[bench] peers: ViT-B/16 and dinov2-small, 8 rows each, interleaved; "
                  "the Fashion-MNIST probe per row (tens of minutes) ...", flush=True)
            results += peers(tmp, args.repeats)
    for ok, text in results:
        print(_line(ok, text))
    targets = [ok for ok, _ in results if ok is not None]
    print(f"[bench] {sum(targets)}/{len(targets)} targets met "
          f"in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([{"ok": ok, "text": t} for ok, t in results], indent=2))
    return 0 if all(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
