#!/usr/bin/env python3
"""trt/check.py of a vtc bundle: build or load a TensorRT engine, run the bundled
samples, print parity against the bundled references and throughput.

Needs numpy and one runtime: `tensorrt` (10.x; CUDA buffers through libcudart via
ctypes: the CUDA toolkit's, or the nvidia-cuda-runtime wheel's) or `onnxruntime-gpu`
(CUDA or TensorRT execution provider). `--runtime ort-cpu` runs the same check on
plain onnxruntime (CPU).

    python3 trt/check.py                      # trt/model.plan, or build it from model.onnx
    python3 trt/check.py --fp32               # build without FP16 kernels
    python3 trt/check.py --runtime ort-gpu    # onnxruntime-gpu instead of TensorRT
    python3 trt/check.py --gate 1e-2          # an FP16 engine needs a looser gate

Tiers (as in report.json): parity — the engine against samples/reference.npz's
eager reference at the same budget, max|Δ| against the recipe's max_parity_diff;
agreement with the bundle's ONNX Runtime engine ("engine"); throughput in img/s at
the bundle's batch. Every bundle file the check reads (model.onnx and its data,
samples/) must have the sha256 manifest.json lists. Exit 0 parity within the gate, 1
over it, 2 a missing runtime or a missing, corrupt or unlisted bundle file (one line,
no traceback). Standalone: stdlib + numpy (+ the runtime).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import glob
import hashlib
import importlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent
INSTALL = ("neither TensorRT nor onnxruntime-gpu is installed: pip install tensorrt "
           "(TensorRT 10, NVIDIA GPU) or pip install onnxruntime-gpu; "
           "--runtime ort-cpu checks parity on plain onnxruntime (CPU)")


class CheckError(Exception):
    """A one-line problem the user can fix (exit 2)."""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # absent or broken: as good as absent
        return None


def tensorrt_module() -> Any:
    trt = _import("tensorrt")
    return trt if trt is not None and hasattr(trt, "Builder") else None  # stubs: no Builder


def ort_module(gpu: bool) -> Any:
    ort = _import("onnxruntime")
    if ort is None:
        return None
    have = set(ort.get_available_providers())
    if gpu and not have & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
        return None
    return ort


# ---- TensorRT (10.x API: named I/O tensors, execute_async_v3) ------------------------

def _cudart() -> Any:
    """libcudart through ctypes: the system's, or the nvidia-cuda-runtime wheel's."""
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13",
             "libcudart.so.12", "libcudart.so.11.0"]
    for entry in sys.path:
        names += sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_runtime", "lib",
                                               "libcudart.so*")))
    for name in names:
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CheckError("TensorRT is installed but libcudart was not found: pip install "
                     "nvidia-cuda-runtime-cu12 (or put the CUDA runtime on LD_LIBRARY_PATH)")


class TrtEngine:
    """A deserialized engine with one device buffer per I/O tensor."""

    H2D, D2H = 1, 2

    def __init__(self, trt: Any, plan: bytes, shapes: dict[str, tuple[int, ...]]) -> None:
        self.trt, self.cuda = trt, _cudart()
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise CheckError("trt/model.plan could not be loaded (built by another TensorRT "
                             "version or GPU?): delete it and run again to rebuild")
        self.ctx = self.engine.create_execution_context()
        self.stream = ctypes.c_void_p()
        self._ok(self.cuda.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for n in self.inputs:
            if n in shapes:
                self.ctx.set_input_shape(n, shapes[n])
        self.buffers: dict[str, tuple[ctypes.c_void_p, Any]] = {}
        import numpy as np

        for n in self.names:
            shape = tuple(self.ctx.get_tensor_shape(n))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            host = np.empty(shape, dtype)
            ptr = ctypes.c_void_p()
            self._ok(self.cuda.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, host.nbytes))),
                     "cudaMalloc")
            self.ctx.set_tensor_address(n, ptr.value)
            self.buffers[n] = (ptr, host)

    @staticmethod
    def _ok(code: int, what: str) -> None:
        if code != 0:
            raise CheckError(f"{what} failed with CUDA error {code} (is a GPU visible?)")

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        for n in self.inputs:
            ptr, host = self.buffers[n]
            arr = np.ascontiguousarray(feeds[n], dtype=host.dtype)
            self._ok(self.cuda.cudaMemcpy(ptr, arr.ctypes.data_as(ctypes.c_void_p),
                                          ctypes.c_size_t(arr.nbytes), self.H2D), "cudaMemcpy")
        if not self.ctx.execute_async_v3(self.stream.value):
            raise CheckError("TensorRT execution failed (see the log above)")
        self._ok(self.cuda.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        out = {}
        for n in self.names:
            if n in self.inputs:
                continue
            ptr, host = self.buffers[n]
            self._ok(self.cuda.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), ptr,
                                          ctypes.c_size_t(host.nbytes), self.D2H), "cudaMemcpy")
            out[n] = host.copy()
        return out


def build_plan(trt: Any, onnx_path: Path, fp16: bool, shapes: dict[str, tuple[int, ...]]
               ) -> bytes:
    """model.onnx → a serialized engine (the timing cache in trt/ is read and updated)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckError(f"TensorRT could not parse {onnx_path.name}: {errs} "
                         "(run `vtc lint-trt model.onnx` for the fix)")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_file = HERE / "timing.cache"
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, False)
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(int(d) < 0 for d in t.shape) and t.name in shapes:
            profile.set_shape(t.name, shapes[t.name], shapes[t.name], shapes[t.name])
            dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CheckError("the TensorRT build failed (see the log above)")
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


# ---- onnxruntime ---------------------------------------------------------------------

def ort_runner(ort: Any, gpu: bool) -> tuple[Any, str]:
    providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
                 if gpu and p in ort.get_available_providers()] + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: keep the check's output readable
    sess = ort.InferenceSession(str(BUNDLE / "model.onnx"), opts, providers=providers)
    outs = [o.name for o in sess.get_outputs()]
    return (lambda feeds: dict(zip(outs, sess.run(None, feeds), strict=True)),
            f"onnxruntime {ort.__version__} ({sess.get_providers()[0]})")


# ---- the check -----------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckError(f"{path}: {type(exc).__name__}; is this a vtc bundle's trt/ "
                         "folder (samples/ and manifest.json beside it)?") from None


def verify(*names: str) -> None:
    """Each of `names` (relative to the bundle) against the sha256 manifest.json lists
    (`files`, `edge`), with a graph's `NAME.data` beside it; CheckError naming the first
    file that is missing, unlisted or corrupt. Only these files are hashed."""
    man = _read_json(BUNDLE / "manifest.json")
    listed = {**man.get("files", {}), **man.get("edge", {})} if isinstance(man, dict) else {}
    for name in [*names, *sorted(n for n in listed for g in names if n.startswith(g + "."))]:
        p, want = BUNDLE / name, listed.get(name)
        if want is None:
            raise CheckError(f"{p}: manifest.json lists no sha256 for it; rebuild the bundle")
        if not p.is_file():
            raise CheckError(f"{p}: no such file, though manifest.json lists it; copy the "
                             "whole bundle folder again")
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                h.update(chunk)
        if h.hexdigest() != want:
            raise CheckError(f"{p} is corrupt: its sha256 {h.hexdigest()[:12]}… is not the "
                             f"{want[:12]}… manifest.json lists; copy the bundle again or "
                             "rebuild it with vtc-export")


def load_samples() -> tuple[dict[str, Any], Any, dict[str, Any]]:
    import numpy as np

    verify("samples/samples.json", "samples/inputs.npz", "samples/reference.npz")
    meta = _read_json(BUNDLE / "samples" / "samples.json")
    try:
        with np.load(BUNDLE / "samples" / "inputs.npz") as f:
            x = f[meta["input"]]
        with np.load(BUNDLE / "samples" / "reference.npz") as f:
            refs = {k: f[k] for k in f.files}
    except (OSError, KeyError, ValueError) as exc:
        raise CheckError(f"samples/: {type(exc).__name__}: {exc}; rebuild the bundle") from None
    return meta, x, refs


def feeds_for(meta: dict[str, Any], xb: Any) -> dict[str, Any]:
    import numpy as np

    feeds = {meta["input"]: xb}
    for name, z in meta.get("zero_inputs", {}).items():
        feeds[name] = np.zeros([len(xb), *z["shape"][1:]], dtype=z["dtype"])
    return feeds


def run_all(run: Any, meta: dict[str, Any], x: Any, batch: int) -> Any:
    """Every sample through `run` in full batches (the last padded with repeats)."""
    import numpy as np

    outs = []
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        real = len(xb)
        if real < batch:
            xb = np.concatenate([xb, x[np.arange(batch - real) % len(x)]])
        outs.append(run(feeds_for(meta, xb))[meta["output"]][:real])
    return np.concatenate(outs)


def stats(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    a64, b64 = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    cos = (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1)
                                          * np.linalg.norm(b64, axis=1), 1e-30)
    return {"max_abs_diff": float(np.abs(a64 - b64).max()), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean())}


def throughput(run: Any, meta: dict[str, Any], x: Any, batch: int, seconds: float
               ) -> dict[str, float]:
    import numpy as np

    xb = x[np.arange(batch) % len(x)]
    feeds = feeds_for(meta, xb)
    for _ in range(3):
        run(feeds)
    n, t0 = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - t0 < seconds:
        run(feeds)
        n += 1
    dt = time.perf_counter() - t0
    return {"img_per_s": batch * n / dt, "mean_ms": 1000 * dt / n, "calls": n}


def _write_atomic(path: Path, data: bytes) -> None:
    """A temporary file beside `path`, renamed into place: never half a plan."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_runner(args: argparse.Namespace, meta: dict[str, Any], batch: int) -> tuple[Any, str]:
    shapes = {meta["input"]: (batch, *meta["input_shape"][1:])}
    shapes.update({k: (batch, *z["shape"][1:]) for k, z in meta.get("zero_inputs", {}).items()})
    want = args.runtime
    trt = tensorrt_module() if want in ("auto", "tensorrt") else None
    if trt is not None:
        plan_file = HERE / "model.plan"
        if plan_file.is_file() and not args.rebuild:
            how = "loaded trt/model.plan"
        else:
            verify("model.onnx")
            _write_atomic(plan_file, build_plan(trt, BUNDLE / "model.onnx", not args.fp32,
                                                shapes))
            how = f"built trt/model.plan ({'fp32' if args.fp32 else 'fp16 allowed'})"
        return TrtEngine(trt, plan_file.read_bytes(), shapes), f"TensorRT {trt.__version__}, {how}"
    if want == "tensorrt":
        raise CheckError("TensorRT is not installed: pip install tensorrt (TensorRT 10, "
                         "NVIDIA GPU), or pass --runtime ort-gpu")
    ort = ort_module(gpu=want != "ort-cpu") if want in ("auto", "ort-gpu", "ort-cpu") else None
    if ort is None:
        raise CheckError(INSTALL if want == "auto" else
                         "onnxruntime-gpu (CUDA or TensorRT provider) is not installed: pip "
                         "install onnxruntime-gpu" if want == "ort-gpu" else
                         "onnxruntime is not installed: pip install onnxruntime")
    verify("model.onnx")
    return ort_runner(ort, gpu=want != "ort-cpu")


def check(args: argparse.Namespace) -> int:
    np = _import("numpy")
    if np is None:
        raise CheckError("numpy is not installed: pip install numpy")
    meta, x, refs = load_samples()
    report = _read_json(BUNDLE / "report.json")
    batch = int(meta["batch"])
    run, what = make_runner(args, meta, batch)
    out = run_all(run, meta, x, batch)
    gate = args.gate if args.gate is not None else meta.get("max_parity_diff")
    result: dict[str, Any] = {"runtime": what, "samples": len(x), "batch": batch,
                              "output": meta["output"], "tiers": {}}
    for name, ref in sorted(refs.items()):
        result["tiers"][name] = stats(out, ref)
    parity_ref = meta.get("parity_reference", "engine")
    parity = result["tiers"][parity_ref]["max_abs_diff"]
    passed = gate is None or parity <= gate
    result["parity"] = {"against": parity_ref, "max_abs_diff": parity, "gate": gate,
                        "passed": passed}
    result["throughput"] = throughput(run, meta, x, batch, args.seconds)
    bundle_ips = (report.get("throughput") or {}).get("compressed_ips")
    result["throughput"]["bundle_ort_img_per_s"] = bundle_ips
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{what}; {len(x)} samples, batch {batch}, output {meta['output']}")
        for name, s in result["tiers"].items():
            print(f"  vs {name:<16} max|Δ| {s['max_abs_diff']:.3e}  cosine min "
                  f"{s['cosine_min']:.6f} mean {s['cosine_mean']:.6f}")
        verdict = "no gate" if gate is None else f"{'PASS' if passed else 'FAIL'} (gate {gate:g})"
        print(f"  parity ({parity_ref}): max|Δ| {parity:.3e} {verdict}")
        t = result["throughput"]
        other = f"; the bundle's ORT engine on the build machine: {bundle_ips:.1f} img/s" \
            if bundle_ips else ""
        print(f"  throughput: {t['img_per_s']:.1f} img/s ({t['mean_ms']:.2f} ms per batch of "
              f"{batch}, {t['calls']} calls){other}")
    return 0 if passed else 1


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit 2 (as vtc's own commands)."""

    def error(self, message: str) -> Any:
        print(f"error: {' '.join(message.split())} (see 'python3 {self.prog} --help')",
              file=sys.stderr)
        sys.exit(2)


def _interrupted(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # once: the clean-up is not cut short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _crash(exc: BaseException) -> str:
    """The traceback of an unexpected error, written to a file; its path."""
    import tempfile
    import traceback

    path = Path(tempfile.gettempdir()) / f"trt-check-crash-{os.getpid()}.log"
    try:
        path.write_text("".join(traceback.format_exception(exc)))
    except OSError:
        return "(could not be written)"
    return str(path)


def _number(lo: float, what: str) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v < lo:
            raise argparse.ArgumentTypeError(f"{text} is not a finite {what} ≥ {lo:g}")
        return v
    return parse


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, _interrupted)  # Ctrl-C, SIGTERM: exit 130, one line
    signal.signal(signal.SIGTERM, _interrupted)
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=["auto", "tensorrt", "ort-gpu", "ort-cpu"],
                    default="auto", help="auto: TensorRT, else onnxruntime-gpu")
    ap.add_argument("--fp32", action="store_true", help="build without FP16 kernels")
    ap.add_argument("--rebuild", action="store_true", help="rebuild trt/model.plan")
    ap.add_argument("--gate", type=_number(0.0, "limit"), default=None,
                    help="parity limit (default: the recipe's max_parity_diff)")
    ap.add_argument("--seconds", type=_number(0.0, "duration"), default=2.0,
                    help="timing duration")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    try:
        args = ap.parse_args(argv)
        return check(args)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # not the bundle's fault: one line, the traceback in a file
        print(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}; "
              f"the full traceback is in {_crash(exc)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
