"""OpenVINO backend: an ONNX graph converted by OpenVINO's ONNX frontend, saved as
OpenVINO IR (``model.ov.xml`` + ``model.ov.bin``, what ``benchmark_app`` and
optimum-intel's ``OVModel`` load) and compiled for one device.

The graph runs as written: inputs e.g. ``pixel_values`` float32 ``[B, 3, H, W]``,
outputs ``[B, classes]`` logits or ``[B, N, C]`` hidden states. The compiled model is
pinned to fp32 arithmetic (``INFERENCE_PRECISION_HINT: f32``): on a CPU with bf16 or
AMX units OpenVINO would otherwise run every MatMul in bf16, merge decisions included,
and parity with the eager reference would not hold.

A graph the frontend cannot convert (an op it has no rule for, e.g. ONNX Runtime's
com.microsoft contrib ops) is refused in one line that names the first such node.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vtc.backends.base import BackendUnavailable, Runner
from vtc.errors import InputError

PACKAGE = "openvino"
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


class OpenVinoGraphError(InputError):
    """OpenVINO's ONNX frontend cannot convert the graph."""


def import_openvino() -> Any:
    """The openvino module, or a one-line `BackendUnavailable` naming the package."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(
            "backend.kind openvino needs the openvino package, which is not installed; "
            "pip install openvino (or pip install 'vtc[openvino]'), or set backend.kind: ort"
        ) from None
    return openvino


def devices() -> list[str]:
    """The devices this OpenVINO installation can compile for (e.g. ['CPU'])."""
    return list(import_openvino().Core().available_devices)


def version() -> str:
    return str(import_openvino().__version__).split("-")[0]


def require_device(device: str) -> None:
    """Refuse (`BackendUnavailable`, one line) a device this installation does not list;
    `GPU.1` and `GPU` both name the GPU plugin."""
    available = devices()
    if device.split(".")[0].split(":")[0] not in {d.split(".")[0] for d in available}:
        raise BackendUnavailable(
            f"backend.options.device: OpenVINO {version()} has no device {device!r} here "
            f"(it offers {', '.join(available)}); set backend.options.device to one of those")


def _unconverted(message: str) -> list[str]:
    """The `domain.op_type`s OpenVINO's conversion report lists as having no rule."""
    m = re.search(r"No conversion rule found for operations:\s*(.+)", message)
    return [t.strip() for t in m.group(1).split(",") if t.strip()] if m else []


def _first_node(graph: Path, op: str) -> str:
    """The name of the first node of `graph` whose `domain.op_type` (or op_type) is `op`."""
    model = onnx.load(str(graph), load_external_data=False)
    for node in model.graph.node:
        full = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        if op in (full, node.op_type):
            return node.name or f"(unnamed {node.op_type} node)"
    return "(not found by name)"


def read(graph: Path) -> Any:
    """`graph` converted by OpenVINO's ONNX frontend (an `openvino.Model`); a graph it
    cannot convert is an `OpenVinoGraphError` naming the first unconvertible node."""
    ov = import_openvino()
    try:
        return ov.Core().read_model(str(graph))
    except RuntimeError as exc:
        ops = _unconverted(str(exc))
        if ops:
            raise OpenVinoGraphError(
                f"backend.kind openvino: OpenVINO {version()} cannot convert node "
                f"{_first_node(graph, ops[0])!r} ({ops[0]}) of {graph.name}"
                + (f" nor {len(ops) - 1} other op type(s) ({', '.join(ops[1:])})"
                   if len(ops) > 1 else "")
                + "; set backend.kind: ort, or export the graph without that op") from None
        first = next((ln.strip() for ln in str(exc).splitlines()
                      if ln.strip() and not ln.startswith(("Exception from", "Check "))),
                     str(exc).strip())
        raise OpenVinoGraphError(f"backend.kind openvino: OpenVINO {version()} cannot read "
                                 f"{graph.name}: {first}") from None


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model behind the `Runner` interface. `load` converts
    `onnx_path`, writes the IR to `engine_path` (its weights beside it, `.bin`) and
    compiles it for `device` in fp32 with the given performance hint and threads."""

    def __init__(self, onnx_path: Path, engine_path: Path, device: str = "CPU",
                 threads: int | None = None, hint: str = "latency") -> None:
        self.onnx_path, self.engine_path = Path(onnx_path), Path(engine_path)
        self.device, self.threads, self.hint = device, threads, hint
        self._compiled: Any = None
        self._request: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []

    @property
    def name(self) -> str:
        return "openvino"

    @property
    def input_names(self) -> list[str]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def config(self) -> dict[str, str]:
        """The compile properties (OpenVINO property names → values)."""
        cfg = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": HINTS[self.hint]}
        if self.threads is not None:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        return cfg

    def load(self) -> None:
        ov = import_openvino()
        require_device(self.device)
        model = read(self.onnx_path)
        ov.save_model(model, str(self.engine_path), compress_to_fp16=False)
        self._compiled = ov.Core().compile_model(model, self.device, self.config())
        self._request = self._compiled.create_infer_request()
        self._inputs = [p.get_any_name() for p in self._compiled.inputs]
        self._outputs = [p.get_any_name() for p in self._compiled.outputs]

    def _run(self, feeds: dict[str, np.ndarray], copy: bool) -> dict[str, np.ndarray]:
        if self._request is None:
            raise RuntimeError("OpenVinoRunner used before load()")
        res = self._request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()},
                                  share_inputs=True, share_outputs=not copy)
        return {name: (np.array(res[port]) if copy else res[port])
                for name, port in zip(self._outputs, self._compiled.outputs, strict=True)}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(feeds, copy=True)

    def timed(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        """One batch per call; inputs and outputs stay in OpenVINO's own buffers."""
        fixed = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        return lambda: self._run(fixed, copy=False)

    def close(self) -> None:
        self._request = None
        self._compiled = None


def engine_files(engine_path: Path) -> list[Path]:
    """The files an IR engine is made of: the `.xml` topology and its `.bin` weights."""
    return [engine_path, engine_path.with_suffix(".bin")]
