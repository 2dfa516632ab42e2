"""`backend.kind: openvino` — OpenVINO: the graph converted by OpenVINO's ONNX frontend,
saved as OpenVINO IR (`model.ov.xml` + `model.ov.bin`) and compiled for one device in
fp32 (`vtc.backends.openvino`); openvino is imported only when used.

Its settings (`backend.options`):

    backend:
      kind: openvino
      threads: 4                 # INFERENCE_NUM_THREADS (null: OpenVINO's default)
      options:
        device: CPU              # an OpenVINO device this machine has
        performance_hint: latency  # latency | throughput (PERFORMANCE_HINT)

Not supported yet, each refused in one line: `precision: fp16` (OpenVINO's precision
hint would lower the merge decisions too), `precision: int8`, and ONNX Runtime's
settings (providers other than the CPU one, provider_options, `cuda_graph: on`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vtc.backends.base import Runner
from vtc.backends.engines import Engine, register
from vtc.backends.options import CPU, EngineOptions
from vtc.errors import InputError


class OpenVinoOptions(BaseModel):
    """`backend.options` of the openvino engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(default="CPU", min_length=1)  # e.g. CPU, GPU, GPU.1
    performance_hint: Literal["latency", "throughput"] = "latency"


def _settings(opts: EngineOptions) -> OpenVinoOptions:
    """`opts.engine` as this engine's settings, the schema's defaults where unset."""
    return OpenVinoOptions.model_validate(dict(opts.engine))


@register
class OpenVinoEngine(Engine):
    """OpenVINO (module docstring)."""

    name = "openvino"
    suffix = ".ov.xml"
    options = OpenVinoOptions
    precisions = ("fp32",)

    def check(self, opts: EngineOptions) -> None:
        from vtc.backends.openvino import require_device

        if opts.precision == "fp16":
            raise InputError(f"backend.kind openvino: precision {opts.precision} is not "
                             "supported yet (OpenVINO's inference-precision hint would lower "
                             "the merge decisions too); set backend.precision: fp32")
        if tuple(opts.providers) != (CPU,) or opts.provider_options or opts.cuda_graph == "on":
            raise InputError("backend.providers, provider_options and cuda_graph are ONNX "
                             "Runtime's settings; with backend.kind openvino drop them and "
                             "choose the device with backend.options.device")
        require_device(_settings(opts).device)

    def runner(self, onnx_path: Path, engine_path: Path, opts: EngineOptions) -> Runner:
        from vtc.backends.openvino import OpenVinoRunner

        s = _settings(opts)
        return OpenVinoRunner(onnx_path, engine_path, device=s.device, threads=opts.threads,
                              hint=s.performance_hint)

    def providers(self, runner: Runner) -> list[str]:
        from vtc.backends.openvino import version

        return [f"OpenVINO {version()} {getattr(runner, 'device', 'CPU')}"]

    def lint(self, graph: Path) -> None:
        """Refuse a graph OpenVINO's ONNX frontend cannot convert, naming the node."""
        from vtc.backends.openvino import read

        read(graph)

    def files(self, engine_path: Path) -> list[Path]:
        from vtc.backends.openvino import engine_files

        return engine_files(engine_path)
