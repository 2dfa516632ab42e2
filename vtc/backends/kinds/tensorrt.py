"""`backend.kind: tensorrt` — a serialized TensorRT plan (`model.plan`), built from the
graph by TensorRT's ONNX parser; TensorRT is imported only when used (it cannot be
installed on the CPU machines, so its tests skip with the reason)."""

from __future__ import annotations

from pathlib import Path

from vtc.backends.base import Runner
from vtc.backends.engines import Engine, register
from vtc.backends.options import EngineOptions


@register
class TensorRTEngine(Engine):
    """TensorRT (module docstring)."""

    name = "tensorrt"
    suffix = ".plan"
    static_batch = "a TensorRT engine (one static optimization profile)"

    def runner(self, onnx_path: Path, engine_path: Path, opts: EngineOptions) -> Runner:
        from vtc.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(onnx_path, engine_path, fp16=opts.fp16,
                              input_shapes=dict(opts.input_shapes) or None, rebuild=True)

    def lint(self, graph: Path) -> None:
        """Refuse a graph that breaks a TensorRT 10 parser limit (`vtc lint-trt`)."""
        from vtc.backends.trt_lint import TrtLintError, format_finding, lint_file

        info = lint_file(graph)
        if info.errors:
            first = next(f for f in info.findings if f.severity == "error")
            raise TrtLintError(f"backend.kind tensorrt: {graph.name} breaks a TensorRT parser "
                               f"limit ({info.errors} error(s)); first: {format_finding(first)};"
                               f" `vtc lint-trt {graph}` lists all")
