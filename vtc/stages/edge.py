"""The bundle's edge files: what a device without vtc, torch or transformers needs to
build and check an engine.

    DIR/samples/inputs.npz      a few preprocessed sample inputs, float32
                                [n, C, H, W] under the graph input's name
    DIR/samples/reference.npz   the compared output for those samples: "engine" (the
                                compressed ORT engine) and "eager_reference" (the eager
                                reference at the same budget: the parity tier)
    DIR/samples/samples.json    names, count, batch and what each reference is
    DIR/trt/build.sh            trtexec: model.onnx → trt/model.plan (--fp16, shapes,
                                timing cache)
    DIR/trt/check.py            standalone: TensorRT or onnxruntime(-gpu) + numpy runs
                                the samples and prints parity and throughput

Also the TensorRT lint of model.onnx (`vtc.backends.trt_lint`): in report.json always,
and a refusal (exit 2) before any engine is built when the recipe asks for TensorRT.
Every file is written inside the pipeline's temp dir (published whole or not at all);
the .npz files are written with fixed zip timestamps so that a rebuild is
byte-identical when the arrays are.
"""

from __future__ import annotations

import io
import json
import shlex
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vtc.backends import engines
from vtc.backends.trt_lint import lint_file
from vtc.report import Preprocess, Report, TrtLintInfo
from vtc.util import sha256_file, write_atomic

__all__ = ["SAMPLES_BYTES", "SAMPLES_MAX", "build_sh", "edge_files", "lint", "write"]

SAMPLES_MAX = 8  # samples in the bundle at most
SAMPLES_BYTES = 4 << 20  # and at most this many bytes of inputs + references
CHECK_TEMPLATE = Path(__file__).parents[1] / "runtime" / "trt_check.py"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def lint(model: Path, kind: str, log: Callable[[str], None], baseline: Path | None = None
         ) -> TrtLintInfo:
    """Lint `model` for TensorRT 10 (the report's finding list, for any engine: the edge
    bundle may be built with TensorRT elsewhere). The recipe's engine first refuses what
    it cannot build (`Engine.lint`: TensorRT refuses a lint error in `model` or in
    `baseline`, whose engine is built too) before any engine is built."""
    engine = engines.get(kind)
    engine.lint(model)  # the engine refuses what it cannot build (TensorRT: lint errors)
    if baseline is not None:
        engine.lint(baseline)
    info = lint_file(model)
    if info.errors or info.warnings:
        log(f"      TensorRT lint of {model.name}: {info.errors} error(s), {info.warnings} "
            "warning(s) (report.json: trt_lint)")
    return info


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format with fixed timestamps (deterministic bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    write_atomic(path, buf.getvalue())


def _count(x: np.ndarray, refs: dict[str, np.ndarray]) -> int:
    """Samples to keep: at most SAMPLES_MAX, and inputs + references of at most
    SAMPLES_BYTES (uncompressed) — but always one."""
    per = max(1, int(x[:1].nbytes) + sum(int(v[:1].nbytes) for v in refs.values()))
    return max(1, min(len(x), SAMPLES_MAX, SAMPLES_BYTES // per))


def _samples(tmp: Path, x: np.ndarray, refs: dict[str, np.ndarray], pre: Preprocess,
             output: str, batch: int, gate: float | None) -> None:
    n = _count(x, refs)
    (tmp / "samples").mkdir(exist_ok=True)
    _write_npz(tmp / "samples" / "inputs.npz", {pre.name: x[:n].astype(np.float32)})
    _write_npz(tmp / "samples" / "reference.npz", {k: v[:n] for k, v in refs.items()})
    about = {
        "engine": "the compressed ONNX Runtime engine's output (report.json: engine)",
        "eager_reference": "the eager PyTorch reference at the same budget (report.json: "
                           "parity.engine, gated by max_parity_diff)",
    }
    meta = {"input": pre.name, "output": output, "count": n, "batch": batch,
            "input_shape": [n, pre.channels, pre.height, pre.width],
            "zero_inputs": {k: {"shape": z.shape, "dtype": z.dtype}
                            for k, z in pre.zero_inputs.items()},
            "references": {k: about[k] for k in sorted(refs)},
            "parity_reference": "eager_reference" if "eager_reference" in refs else "engine",
            "max_parity_diff": gate}
    write_atomic(tmp / "samples" / "samples.json", json.dumps(meta, indent=2, sort_keys=True)
                 + "\n")


def _dims(shape: list[int | str], batch: int) -> str:
    return "x".join(str(batch if isinstance(d, str) else d) for d in shape)


def build_sh(pre: Preprocess, shape: list[int | str], batch: int) -> str:
    """trt/build.sh: the trtexec command line for the bundle's model.onnx. `shape`: the
    image input's `[B, C, H, W]` (B a name when the batch is dynamic)."""
    inputs = {pre.name: shape}
    inputs.update({k: [shape[0], *z.shape[1:]] for k, z in pre.zero_inputs.items()})
    dynamic = isinstance(shape[0], str)
    lines = ["#!/bin/sh",
             "# Build a TensorRT engine from this bundle's model.onnx (written by vtc-export).",
             "#   sh trt/build.sh                 -> trt/model.plan (FP16 kernels allowed)",
             "#   PRECISION= sh trt/build.sh      -> FP32 only (parity comparable to the "
             "report's gate)",
             "#   sh trt/build.sh --verbose       (extra arguments go to trtexec)",
             "# trtexec ships with TensorRT (e.g. /usr/src/tensorrt/bin/trtexec); set TRTEXEC "
             "to its path.",
             "# The timing cache makes rebuilds on the same GPU and TensorRT version fast.",
             "# Then: python3 trt/check.py (parity against samples/, throughput).",
             "set -eu", 'cd "$(dirname "$0")"', 'TRTEXEC="${TRTEXEC:-trtexec}"',
             'PRECISION="${PRECISION---fp16}"']
    args = ["--onnx=../model.onnx", "--saveEngine=model.plan", "--timingCacheFile=timing.cache"]
    if dynamic:
        lines.append(f"# dynamic batch: profile min 1, opt and max {batch} (the timed batch); "
                     "edit to serve larger batches")
        for flag, b in (("--minShapes", 1), ("--optShapes", batch), ("--maxShapes", batch)):
            args.append(flag + "=" + ",".join(f"{shlex.quote(k)}:{_dims(v, b)}"
                                              for k, v in inputs.items()))
    else:
        lines.append("# static shapes (no profile needed): "
                     + ", ".join(f"{k} {_dims(v, batch)}" for k, v in inputs.items()))
    lines.append('"$TRTEXEC" ' + " ".join(args) + ' $PRECISION "$@"')
    return "\n".join(lines) + "\n"


def write(tmp: Path, report: Report, x: np.ndarray, refs: dict[str, np.ndarray],
          pre: Preprocess, shape: list[int | str], batch: int) -> None:
    """samples/ and trt/ into the bundle's temp dir `tmp` (module docstring)."""
    gate = report.recipe.get("gates", {}).get("max_parity_diff")
    _samples(tmp, x, refs, pre, report.output, batch, gate)
    (tmp / "trt").mkdir(exist_ok=True)
    write_atomic(tmp / "trt" / "build.sh", build_sh(pre, shape, batch))
    (tmp / "trt" / "build.sh").chmod(0o755)
    write_atomic(tmp / "trt" / "check.py", CHECK_TEMPLATE.read_text())
    (tmp / "trt" / "check.py").chmod(0o755)


def edge_files(tmp: Path) -> dict[str, str]:
    """sha256 of every file under samples/ and trt/ (the manifest's `edge`)."""
    return {p.relative_to(tmp).as_posix(): sha256_file(p)
            for d in ("samples", "trt") if (tmp / d).is_dir()
            for p in sorted((tmp / d).iterdir()) if p.is_file()}
