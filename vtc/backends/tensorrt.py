"""TensorRT backend (TensorRT 10 Python API), with torch CUDA tensors as buffers.

``tensorrt`` and ``torch`` are imported lazily so that this module imports on
machines without a GPU. Engines are static: every dynamic ONNX dimension must be
pinned through ``input_shapes`` (e.g. ``{"pixel_values": (8, 3, 224, 224)}``),
which becomes a min = opt = max optimization profile.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vtc.backends.base import BackendUnavailable, Runner

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

NOT_INSTALLED = (
    "TensorRT is not installed (pip install tensorrt needs NVIDIA's index and a GPU); "
    "use the ONNX Runtime backend"
)


def tensorrt_available() -> bool:
    """True when the real TensorRT bindings (not only type stubs) can be imported."""
    try:
        mod = importlib.import_module("tensorrt")
    except Exception:  # a broken install is as good as none
        return False
    # The `tensorrt-stubs` package leaves a namespace package without the bindings.
    return hasattr(mod, "Builder")


def _require_tensorrt() -> None:
    if not tensorrt_available():
        raise BackendUnavailable(NOT_INSTALLED)


def _require_cuda() -> None:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a project dependency
        raise BackendUnavailable("the TensorRT backend needs torch for CUDA buffers") from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("the TensorRT backend needs a CUDA GPU; none is visible to torch")


def _dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(int(d[i]) for i in range(len(d)))


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    fp16: bool = False,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    workspace_bytes: int | None = None,
) -> Path:
    """Parse ``onnx_path``, build a serialized engine and write it to ``engine_path``."""
    _require_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = input_shapes or {}
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        declared = _dims(tensor.shape)
        want = shapes.get(tensor.name)
        if all(d >= 0 for d in declared):
            if want is not None and tuple(want) != declared:
                raise ValueError(
                    f"input {tensor.name!r} is static {declared} in the ONNX file; "
                    f"input_shapes asks for {tuple(want)}"
                )
            continue
        if want is None:
            raise ValueError(
                f"input {tensor.name!r} has dynamic shape {declared}; pass "
                f"input_shapes={{{tensor.name!r}: (...)}} to build a static engine"
            )
        shape = trt.Dims([int(d) for d in want])
        profile.set_shape(tensor.name, shape, shape, shape)
        dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT engine build failed for {onnx_path}; see the log above")
    out = Path(engine_path)
    _write_atomic(out, bytes(memoryview(serialized)))
    return out


def _torch_dtype(dt: trt.DataType) -> torch.dtype:
    import tensorrt as trt
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    if dt not in table:
        raise TypeError(f"TensorRT tensor type {dt} has no torch equivalent here")
    return table[dt]


class TensorRTRunner(Runner):
    """A TensorRT engine; built from ``onnx_path`` on ``load`` when ``engine_path``
    does not exist yet (or ``rebuild`` is true)."""

    def __init__(
        self,
        onnx_path: str | Path,
        engine_path: str | Path,
        fp16: bool = False,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        rebuild: bool = False,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.engine_path = Path(engine_path)
        self.fp16 = fp16
        self.input_shapes = input_shapes
        self.rebuild = rebuild
        self._runtime: trt.Runtime | None = None  # must outlive the engine
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: torch.cuda.Stream | None = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    @property
    def name(self) -> str:
        return "tensorrt-fp16" if self.fp16 else "tensorrt"

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def load(self) -> None:
        if self._context is not None:
            return
        _require_tensorrt()
        _require_cuda()
        import tensorrt as trt
        import torch

        if self.rebuild or not self.engine_path.is_file():
            build_engine(self.onnx_path, self.engine_path, self.fp16, self.input_shapes)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.engine_path}")
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._runtime, self._engine, self._context = runtime, engine, context
        self._stream = torch.cuda.Stream()

    def infer_device(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on CUDA tensors (e.g. ``[B, 3, H, W]``); returns CUDA tensors, no host copies."""
        import torch

        if self._engine is None or self._context is None or self._stream is None:
            raise RuntimeError("call load() before infer()")
        engine, context, stream = self._engine, self._context, self._stream
        missing = set(self._inputs) - set(feeds)
        if missing:
            raise KeyError(f"missing inputs {sorted(missing)}; the engine needs {self._inputs}")
        keep: list[torch.Tensor] = []
        with torch.cuda.stream(stream):
            for name in self._inputs:
                want = _torch_dtype(engine.get_tensor_dtype(name))
                t = feeds[name].to(device="cuda", dtype=want).contiguous()
                keep.append(t)
                if not context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"input {name!r}: shape {tuple(t.shape)} rejected by engine")
                context.set_tensor_address(name, t.data_ptr())
            outputs: dict[str, torch.Tensor] = {}
            for name in self._outputs:
                shape = _dims(context.get_tensor_shape(name))
                dtype = _torch_dtype(engine.get_tensor_dtype(name))
                outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return outputs

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy host arrays to the GPU, run, and copy every output back to numpy."""
        import torch

        dev = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        out = self.infer_device(dev)
        return {
            k: v.float().cpu().numpy() if v.dtype == torch.bfloat16 else v.cpu().numpy()
            for k, v in out.items()
        }

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
