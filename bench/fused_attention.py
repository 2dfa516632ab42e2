"""Fused attention on the CPU: the same engines with and without
`vtc.passes.fuse_attention`, timed side by side (interleaved, one process).

    python -m bench.fused_attention [--repeats 8] [--rounds 3] [--third-party] [--no-vit]

ViT-B/16 (random weights, seed 0), 224 px, batch 8: the uncompressed graph and
tome-r16, each as an ORT engine built from the unfused and from the fused graph (four
engines, one interleaved measurement per round). `--third-party` adds the
nn.MultiheadAttention encoder of bench/third_party.py (folded heads, 1,024 tokens) at
ToMe flops_ratio 2.0 with proportional attention on. Prints, per pair, the median of the
per-call paired ratios unfused/fused (> 1: fused is faster) of every round, so a busy
machine shows up as spread between rounds.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from vtc import passes
from vtc.backends.ort import OrtRunner
from vtc.passes.fuse_attention import fuse_file
from vtc.passes.model_io import save_model
from vtc.recipe import load_recipe
from vtc.stages.compress import rewrite
from vtc.stages.load import onnx_geometry
from vtc.validate.bench import measure_interleaved


def _compress(src: Path, dst: Path, batch: int, recipe: str, sets: list[str]) -> Path:
    model = passes.load(src, batch)
    rewrite(model, load_recipe(recipe, sets).budget(onnx_geometry(model, None)))
    save_model(model, dst)
    return dst


def _vit_b16(tmp: Path, batch: int) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from vtc.exporter._hf import quiet_transformers
    from vtc.exporter.export import export_onnx
    from vtc.exporter.registry import get_family

    torch.manual_seed(0)
    with quiet_transformers():
        cfg = ViTConfig()  # ViT-B/16 at 224 px
        cfg.num_labels = 1000
        model = ViTForImageClassification(cfg).eval()
    return export_onnx(get_family("vit"), model, batch, 224, tmp / "vit-b16.onnx")


def _pairs(tmp: Path, vit: bool, third_party: bool, batch: int
           ) -> dict[str, tuple[Path, Path]]:
    """name → (unfused graph, fused graph)."""
    graphs: dict[str, Path] = {}
    if vit:
        base = _vit_b16(tmp, batch)
        graphs["vit-b16 uncompressed"] = base
        graphs["vit-b16 tome-r16"] = _compress(base, tmp / "tome.onnx", batch, "tome-r16", [])
    if third_party:
        from tests.torch_encoders import Encoder, Spec, export

        spec = Spec("mha", batch_first=True, cls=False, channels=1, height=128, width=512,
                    dim=256, heads=8, depth=12)
        enc = export(Encoder(spec), tmp / "enc.onnx", batch=batch, dynamo=True)
        graphs["third-party uncompressed"] = enc
        graphs["third-party tome fr2.0 prop"] = _compress(
            enc, tmp / "enc-tome.onnx", batch, "tome-r8",
            ["tome.r=null", "tome.flops_ratio=2.0", "tome.proportional_attention=true"])
    out = {}
    for i, (name, g) in enumerate(graphs.items()):
        fused = tmp / f"fused{i}.onnx"
        fuse_file(g, fused)
        out[name] = (g, fused)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--third-party", action="store_true")
    ap.add_argument("--no-vit", action="store_true", help="skip the ViT-B/16 pairs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pairs = _pairs(Path(d), not args.no_vit, args.third_party, args.batch)
        runners: dict[str, OrtRunner] = {}
        for name, (plain, fused) in pairs.items():
            runners[f"{name} | unfused"] = OrtRunner(plain)
            runners[f"{name} | fused"] = OrtRunner(fused)
        for r in runners.values():
            r.load()
        feeds = {}
        for key, r in runners.items():
            inp = onnx.load(str(r.model_path), load_external_data=False).graph.input[0]
            shape = [d.dim_value or args.batch for d in inp.type.tensor_type.shape.dim]
            feeds[key] = {inp.name: np.random.default_rng(0).standard_normal(shape)
                          .astype(np.float32)}
        calls: dict[str, Callable[[], object]] = {
            k: functools.partial(r.infer, feeds[k]) for k, r in runners.items()}
        ratios: dict[str, list[float]] = {name: [] for name in pairs}
        for rnd in range(args.rounds):
            t = measure_interleaved(calls, args.batch, warmup=2, repeats=args.repeats)
            for name in pairs:
                u = np.asarray(t[f"{name} | unfused"].samples_ms)
                f = np.asarray(t[f"{name} | fused"].samples_ms)
                ratios[name].append(float(np.median(u / f)))
                print(f"round {rnd + 1} {name:<30} unfused p50 {np.median(u):8.1f} ms  "
                      f"fused p50 {np.median(f):8.1f} ms  paired ratio {ratios[name][-1]:.3f}",
                      flush=True)
        for name, rs in ratios.items():
            print(f"{name:<30} unfused/fused: median {np.median(rs):.3f} "
                  f"(rounds: {', '.join(f'{r:.3f}' for r in rs)})")


if __name__ == "__main__":
    main()
