"""`make bench`, OpenVINO section (issue 20, item 4): `backend.kind: openvino`.

1. Engine parity: the compressed OpenVINO engine against the eager reference at the
   same budget (fp32), every family × {tome-r8, pitome-r8, evit-keep70}: ≤ 1e-4.
2. ViT-B/16, 224 px, batch 8, tome-r16: vtc + OpenVINO against OpenVINO uncompressed,
   timed interleaved by the pipeline in one process (target ≥ 1.8×); the ORT engines
   of the same bundle recipe for comparison (information).

Without the openvino package it says so and reports nothing as met or missed.
Run alone: `python -m bench.openvino [--repeats N] [--only parity|speed]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from bench.run import FAMILY_CONFIGS, _line, _run, save_checkpoint, vit_b16

KIND = ["backend.kind=openvino"]


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def parity(tmp: Path) -> list[tuple[bool | None, str]]:
    lines: list[tuple[bool | None, str]] = []
    for fam in FAMILY_CONFIGS:
        ckpt = save_checkpoint(fam, tmp / f"ov-ckpt-{fam}")
        for recipe in ("tome-r8", "pitome-r8", "evit-keep70"):
            sets = KIND + (["evit.score=mean"] if recipe.startswith("evit")
                           and fam == "siglip" else [])
            rep = _run(ckpt, recipe, tmp / f"ov-p-{fam}-{recipe}", False, sets, batch=4)
            d = rep["parity"]["engine"]["max_abs_diff"]
            b = rep["budget"]
            lines.append((d <= 1e-4, f"OpenVINO engine parity {fam:<7} {recipe:<12} max|Δ| "
                          f"{d:.2e} (≤ 1e-4; tokens {b['tokens_in']}→{b['tokens_out']})"))
    return lines


def speed(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    ckpt = vit_b16(tmp / "ov-vit-b16")
    sets = [f"validate.repeats={repeats}", "validate.samples=8", "validate.warmup=3"]
    lines: list[tuple[bool | None, str]] = []
    for kind in ("openvino", "ort"):
        rep = _run(ckpt, "tome-r16", tmp / f"ov-b16-{kind}", True,
                   [*sets, f"backend.kind={kind}"])
        th, b = rep["throughput"], rep["budget"]
        text = (f"ViT-B/16 224px batch 8 tome-r16 on {kind}: FLOPs ratio "
                f"{b['flops_ratio']:.2f}, uncompressed {th['baseline_ips']:.1f} → vtc "
                f"{th['compressed_ips']:.1f} img/s, speedup {th['speedup']:.2f}× "
                f"[{th['speedup_ci']['low']:.2f}, {th['speedup_ci']['high']:.2f}], efficiency "
                f"{th['efficiency']:.2f}; parity {rep['parity']['engine']['max_abs_diff']:.1e}")
        if kind == "openvino":
            lines.append((th["speedup"] >= 1.8, text + " [target: ≥ 1.8× OpenVINO uncompressed]"))
        else:
            lines.append((None, text))
    return lines


def openvino(tmp: Path, repeats: int, only: str | None = None) -> list[tuple[bool | None, str]]:
    if not available():
        return [(None, "OpenVINO: the openvino package is not installed (pip install "
                 "'vtc[openvino]'); its section was not run")]
    lines: list[tuple[bool | None, str]] = []
    if only in (None, "parity"):
        lines += parity(tmp)
    if only in (None, "speed"):
        lines += speed(tmp, repeats)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", choices=["parity", "speed"], default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vtc-bench-ov-") as d:
        results = openvino(Path(d), args.repeats, args.only)
    for ok, text in results:
        print(_line(ok, text))
    return 0 if all(ok is not False for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
