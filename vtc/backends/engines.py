"""The engine registry: `backend.kind` in a recipe names one of these.

An engine turns an ONNX file into a runner (`vtc.backends.base.Runner`) and says
which file in the bundle holds the built engine. The pipeline never names ONNX
Runtime or TensorRT; it asks the registry and the engine's hooks:

* `check` — refuse options the installed engine cannot honour, before any work;
* `static_batch` — why the engine needs a static batch (None: any batch);
* `lint` — refuse a graph the engine cannot build, before any engine is built;
* `placement` — where a graph's nodes run (per node, the device or provider), for the
  CUDA-graph decision and the report (None where the notion does not apply);
* `runner`, `fusions`, `providers` — build and run; inspect the built engine;
* `options` — the schema of the engine's own settings (`backend.options` in a recipe,
  checked when the recipe is read); `files` — what the built engine is made of.

The ORT-era settings at the top of `backend:` (providers, provider_options,
cuda_graph, io_binding) are ONNX Runtime's; an engine that has no use for them refuses
them in `check` rather than ignoring them.

Engine modules live in `vtc.backends.kinds` and register themselves; the registry
imports every module there the first time it is asked (as `vtc.methods` does), so a
new engine is one module there and its tests. An engine module imports its runtime
lazily: the recipe reads the registry's names at start-up.
"""

from __future__ import annotations

import abc
import functools
import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from vtc.backends.base import Runner
from vtc.backends.options import EngineOptions
from vtc.errors import InputError

__all__ = ["Engine", "EngineOptions", "NoOptions", "get", "names", "register"]


class NoOptions(BaseModel):
    """The `backend.options` schema of an engine that has no settings of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(abc.ABC):
    name: ClassVar[str] = ""
    suffix: ClassVar[str] = ""  # the built engine's file suffix in the bundle
    # True: the engine runs the graph in the arithmetic it holds, so an fp16 deployment
    # needs the graph converted first (vtc.passes.precision); False: the engine's builder
    # takes the precision as a flag (TensorRT --fp16).
    converts_precision: ClassVar[bool] = False
    # the `backend.precision` values it deploys (anything else is refused before work)
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    # the schema of `backend.options` (pydantic, extra keys forbidden)
    options: ClassVar[type[BaseModel]] = NoOptions
    # timing can keep inputs and outputs on the device (`backend.io_binding`)
    binds_io: ClassVar[bool] = False
    # the runtime that runs a vision-language bundle whose graphs this engine kind runs
    # (its generation loop: vision → embedding → decoder with a KV cache), and the
    # execution providers it runs them on; None: the kind cannot run one (the VLM stage
    # refuses it before any work)
    generation: ClassVar[str | None] = None
    generation_providers: ClassVar[tuple[str, ...]] = ()

    def parse_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """`backend.options` validated against this engine's schema, defaults filled in
        (`ValueError`, one line, naming the key)."""
        try:
            return self.options.model_validate(dict(raw)).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(x) for x in first["loc"])
            known = ", ".join(self.options.model_fields) or "none"
            if first["type"] == "extra_forbidden":
                raise ValueError(f"options.{key} is not a setting of the {self.name} engine "
                                 f"(its settings: {known})") from None
            raise ValueError(f"options.{key}: {first['msg']}") from None

    def files(self, engine_path: Path) -> list[Path]:
        """The files the built engine at `engine_path` is made of (removed together,
        listed together in the manifest): the file and its external data when present."""
        return [engine_path, engine_path.with_name(engine_path.name + ".data")]

    def check(self, opts: EngineOptions) -> None:  # noqa: B027 - most engines check nothing
        """Refuse options this engine (as installed) cannot honour, before any work
        (`vtc.errors.InputError`, one line). The default accepts every option; the
        precision is checked against `precisions` by `check_precision`."""

    def check_precision(self, opts: EngineOptions) -> None:
        """Refuse a `backend.precision` this engine does not deploy (one line)."""
        if opts.precision not in self.precisions:
            raise InputError(f"backend.kind {self.name}: precision {opts.precision} is not "
                             f"supported (this engine deploys {', '.join(self.precisions)}); "
                             "set backend.precision to one of those")
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

    # why the engine needs the static build batch (e.g. one optimization profile), or
    # None when it takes any batch; the load stage keeps the batch static for it
    static_batch: ClassVar[str | None] = None

    def lint(self, graph: Path) -> None:  # noqa: B027 - most engines build any valid graph
        """Refuse a graph this engine cannot build, before any engine is built
        (`vtc.errors.InputError`, one line naming the node). Default: accept."""

    def placement(self, graph: Path, opts: EngineOptions, feeds: Mapping[str, Any]
                  ) -> dict[str, str] | None:
        """Where each node of `graph` runs (node name → device or provider), measured
        with `feeds`; None when the engine runs everything on one device or cannot say."""
        return None


_ENGINES: dict[str, Engine] = {}


@functools.cache
def _discover() -> None:
    """Import every engine module in `vtc.backends.kinds` once (each registers itself)."""
    from vtc.backends import kinds

    for mod in pkgutil.iter_modules(kinds.__path__):
        importlib.import_module(f"{kinds.__name__}.{mod.name}")


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: instantiate and register an engine under its name."""
    engine = cls()
    if not engine.name or engine.name in _ENGINES:
        raise TypeError(f"{cls.__name__}: engines need a unique name")
    _ENGINES[engine.name] = engine
    return cls


def names() -> list[str]:
    _discover()
    return sorted(_ENGINES)


def get(name: str) -> Engine:
    _discover()
    try:
        return _ENGINES[name]
    except KeyError:
        raise InputError(f"unknown engine {name!r}; known engines: {', '.join(names())}") from None
