"""`backend.kind: ort` — ONNX Runtime: the session optimised at ORT_ENABLE_ALL, saved as
the engine file (`model.ort.onnx`); onnxruntime is imported only when used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vtc.backends.base import Runner
from vtc.backends.engines import Engine, register
from vtc.backends.options import CPU, EngineOptions
from vtc.errors import InputError


@register
class OrtEngine(Engine):
    """ONNX Runtime (module docstring)."""

    name = "ort"
    suffix = ".ort.onnx"
    converts_precision = True
    precisions = ("fp32", "fp16", "int8")
    fuses_attention = True
    binds_io = True
    # a VLM bundle's graphs run in onnxruntime-genai (the CPU build vtc depends on)
    generation = "onnxruntime-genai"
    generation_providers = (CPU,)

    def check(self, opts: EngineOptions) -> None:
        import onnxruntime as ort

        from vtc.backends.options import check_ort

        if opts.precision == "int8" and tuple(opts.providers) != (CPU,):
            raise InputError(f"backend.precision int8 runs on the CPU execution provider only "
                             f"(asked: {', '.join(opts.providers)}); set backend.providers: "
                             f"[{CPU}] or precision fp16")
        check_ort(opts, list(ort.get_available_providers()), ort.__version__)

    def runner(self, onnx_path: Path, engine_path: Path, opts: EngineOptions) -> Runner:
        from vtc.backends.ort import OrtRunner

        return OrtRunner(onnx_path, providers=list(opts.providers),
                         optimized_model_path=engine_path, intra_op_threads=opts.threads,
                         provider_options={p: opts.options_for(p) for p in opts.providers},
                         io_binding=opts.io_binding)

    def fusions(self, baseline_engine: Path, compressed_engine: Path
                ) -> dict[str, dict[str, int]] | None:
        from vtc.backends.ort import fused_op_counts, fusion_summary

        return fusion_summary(fused_op_counts(baseline_engine), fused_op_counts(compressed_engine))

    def providers(self, runner: Runner) -> list[str]:
        return list(getattr(runner, "providers", []))

    def placement(self, graph: Path, opts: EngineOptions, feeds: Mapping[str, Any]
                  ) -> dict[str, str] | None:
        """Each node's execution provider from a profiled run; None on the CPU alone."""
        if tuple(opts.providers) == (CPU,):
            return None
        from vtc.backends.ort import node_placement

        return node_placement(graph, list(opts.providers), opts.provider_options, dict(feeds))
