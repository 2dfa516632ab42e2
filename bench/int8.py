"""`make bench`, int8 section (issue 20, item 3): `backend.precision: int8` on ONNX
Runtime's CPU EP — weight MatMuls/Gemms quantized (QDQ, calibrated on the validation
images), vtc's merge/prune decisions fp32.

ViT-B/16, 224 px, batch 8, random weights, tome-r16: the int8 compressed engine against
the int8 uncompressed one, timed interleaved by the pipeline in one process (target
≥ 1.8×, as for fp32), with the deployment tier's cosine against the fp32 reference
engine and engine parity (on the fp32 reference engines) for information; then the same
recipe in fp32 (built and timed after it, not interleaved) for the int8/fp32 ratio.

Run alone: `python -m bench.int8 [--repeats N]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.run import _line, _run, vit_b16


def int8(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    ckpt = vit_b16(tmp / "int8-vit-b16")
    sets = [f"validate.repeats={repeats}", "validate.samples=8", "validate.warmup=3",
            "backend.precision=int8"]
    rep = _run(ckpt, "tome-r16", tmp / "int8-b16", True, sets)
    th, b, d = rep["throughput"], rep["budget"], rep["deployment"]
    conv = rep["engine"]["conversion"]
    text = (f"ViT-B/16 224px batch 8 tome-r16, int8 (ORT CPU): FLOPs ratio "
            f"{b['flops_ratio']:.2f}, int8 uncompressed {th['baseline_ips']:.1f} → vtc int8 "
            f"{th['compressed_ips']:.1f} img/s, speedup {th['speedup']:.2f}× "
            f"[{th['speedup_ci']['low']:.2f}, {th['speedup_ci']['high']:.2f}]; int8 vs fp32 "
            f"reference engine: cosine mean {d['cosine_mean']:.4f} (min {d['cosine_min']:.4f}), "
            f"top-1 agreement {d['top1_agreement']}; parity (fp32 engines) "
            f"{rep['parity']['engine']['max_abs_diff']:.1e}; "
            f"{conv.get('int8 MatMul/Gemm')} MatMul/Gemm int8, "
            f"{conv.get('fp32 MatMul/Gemm')} fp32")
    lines: list[tuple[bool | None, str]] = [
        (th["speedup"] >= 1.8, text + " [target: ≥ 1.8× int8 uncompressed]")]
    fp32 = _run(ckpt, "tome-r16", tmp / "fp32-b16", True, sets[:-1])["throughput"]
    lines.append((None, f"the same recipe in fp32, built and timed next (same process, not "
                  f"interleaved with the int8 run): uncompressed {fp32['baseline_ips']:.1f} → "
                  f"vtc {fp32['compressed_ips']:.1f} img/s, speedup {fp32['speedup']:.2f}×; "
                  f"int8/fp32 img/s: uncompressed "
                  f"{th['baseline_ips'] / fp32['baseline_ips']:.2f}×, compressed "
                  f"{th['compressed_ips'] / fp32['compressed_ips']:.2f}×"))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vtc-bench-int8-") as t:
        results = int8(Path(t), args.repeats)
    for ok, text in results:
        print(_line(ok, text))
    return 0 if all(ok is not False for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
