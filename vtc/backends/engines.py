"""The engine registry: `backend.kind` in a recipe names one of these.

An engine turns an ONNX file into a runner (`vtc.backends.base.Runner`) and says
which file in the bundle holds the built engine. The pipeline never names ONNX
Runtime or TensorRT; it asks the registry. Adding an engine is one class here
(or in a module that registers itself) and its tests.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

from vtc.backends.base import Runner
from vtc.backends.options import EngineOptions
from vtc.errors import InputError

__all__ = ["Engine", "EngineOptions", "get", "names", "register"]


class Engine(abc.ABC):
    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""  # the built engine's file suffix in the bundle
    # True: the engine runs the graph in the arithmetic it holds, so an fp16 deployment
    # needs the graph converted first (vtc.passes.precision); False: the engine's builder
    # takes the precision as a flag (TensorRT --fp16).
    converts_precision: ClassVar[bool] = False

    def check(self, opts: EngineOptions) -> None:  # noqa: B027 - most engines check nothing
        """Refuse options this engine (as installed) cannot honour, before any work
        (`vtc.errors.InputError`, one line). The default accepts every option."""
    # runs com.microsoft ops: the compile stage gives it both graphs with attention fused
    # (vtc.passes.fuse_attention) unless the recipe says backend.fuse_attention: false
    fuses_attention: ClassVar[bool] = False

    @abc.abstractmethod
    def runner(self, onnx_path: Path, engine_path: Path, opts: EngineOptions) -> Runner:
        """A runner for `onnx_path` that writes (or reuses) the built engine at
        `engine_path`; it loads when entered."""

    def fusions(self, baseline_engine: Path, compressed_engine: Path
                ) -> dict[str, dict[str, int]] | None:
        """Fused-op counts of both built engines (`vtc.report.FusionInfo` fields), or None
        when the engine format cannot be inspected."""
        return None

    def providers(self, runner: Runner) -> list[str]:
        """The execution providers a loaded runner uses ([] when the notion does not apply)."""
        return []


_ENGINES: dict[str, Engine] = {}


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: instantiate and register an engine under its name."""
    engine = cls()
    if not engine.name or engine.name in _ENGINES:
        raise TypeError(f"{cls.__name__}: engines need a unique name")
    _ENGINES[engine.name] = engine
    return cls


def names() -> list[str]:
    return sorted(_ENGINES)


def get(name: str) -> Engine:
    try:
        return _ENGINES[name]
    except KeyError:
        raise InputError(f"unknown engine {name!r}; known engines: {', '.join(names())}") from None


@register
class OrtEngine(Engine):
    """ONNX Runtime: the session optimised at ORT_ENABLE_ALL, saved as the engine file."""

    name = "ort"
    suffix = ".ort.onnx"
    converts_precision = True

    def check(self, opts: EngineOptions) -> None:
        import onnxruntime as ort

        from vtc.backends.options import check_ort

        check_ort(opts, list(ort.get_available_providers()), ort.__version__)
    fuses_attention = True

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


@register
class TensorRTEngine(Engine):
    """TensorRT (imported lazily; needs the bindings and a CUDA GPU)."""

    name = "tensorrt"
    suffix = ".plan"

    def runner(self, onnx_path: Path, engine_path: Path, opts: EngineOptions) -> Runner:
        from vtc.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(onnx_path, engine_path, fp16=opts.fp16,
                              input_shapes=dict(opts.input_shapes) or None, rebuild=True)
