"""The engine interface: engine modules are discovered in `vtc.backends.kinds`, and the
stages ask an engine's hooks (static batch, lint, placement) instead of its name."""

from __future__ import annotations

import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vtc.backends import engines, kinds
from vtc.backends.base import Runner
from vtc.errors import InputError


def test_every_module_in_kinds_registers_one_engine() -> None:
    modules = sorted(m.name for m in pkgutil.iter_modules(kinds.__path__))
    assert modules == engines.names() == ["openvino", "ort", "tensorrt"]
    for name in modules:
        assert type(engines.get(name)).__module__ == f"vtc.backends.kinds.{name}"


class _Picky(engines.Engine):
    """An engine that takes a static batch only and refuses graphs named bad*."""

    name = "picky-test"
    suffix = ".picky"
    static_batch = "the picky test engine (one compiled shape)"

    def runner(self, onnx_path: Path, engine_path: Path, opts: Any) -> Runner:
        raise NotImplementedError

    def lint(self, graph: Path) -> None:
        if graph.name.startswith("bad"):
            raise InputError(f"backend.kind picky-test: {graph.name} is bad")


@pytest.fixture
def picky() -> Iterator[str]:
    engines.register(_Picky)
    try:
        yield _Picky.name
    finally:
        engines._ENGINES.pop(_Picky.name)


def test_the_load_stage_asks_the_engine_for_a_static_batch(picky: str) -> None:
    from vtc.recipe import load_recipe
    from vtc.stages.load import batch_axis

    logs: list[str] = []
    assert batch_axis(load_recipe("tome-r8", [f"backend.kind={picky}"]), logs.append) == (
        False, False)
    assert "the picky test engine" in logs[0]
    assert batch_axis(load_recipe("tome-r8", []), logs.append) == (True, False)


def test_the_edge_lint_asks_the_engine_to_refuse(picky: str, tmp_path: Path) -> None:
    from tests.backends.tiny_models import linear_ln_gelu
    from vtc.stages.edge import lint

    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    for p in (good, bad):
        linear_ln_gelu(p)
    assert lint(good, picky, lambda _m: None).errors == 0
    with pytest.raises(InputError, match=r"bad\.onnx is bad"):
        lint(good, picky, lambda _m: None, baseline=bad)
    assert lint(bad, "ort", lambda _m: None).errors == 0  # ort builds any valid graph


def test_placement_is_the_engines_own_answer(tmp_path: Path) -> None:
    """ORT on the CPU alone has nothing to place; TensorRT (one device) gives None."""
    from tests.backends.tiny_models import linear_ln_gelu
    from vtc.backends.options import EngineOptions

    path = tmp_path / "m.onnx"
    linear_ln_gelu(path)
    opts = EngineOptions()
    assert engines.get("ort").placement(path, opts, {}) is None
    assert engines.get("tensorrt").placement(path, opts, {}) is None
