"""build_engine against a recording stand-in for the TensorRT module.

The real TensorRT needs a GPU; this checks our call sequence, shape handling and
error reporting. The fake parser reads input shapes from the ONNX file (a
dim_param becomes -1, as in TensorRT).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import onnx
import pytest

from tests.backends.tiny_models import linear_ln_gelu
from vtc.backends.base import BackendUnavailable
from vtc.backends.tensorrt import TensorRTRunner, build_engine


class _Net:
    def __init__(self) -> None:
        self.inputs: list[Any] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> Any:
        return self.inputs[i]


class _Parser:
    fail_with: ClassVar[list[str]] = []

    def __init__(self, network: _Net, logger: object) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, path: str) -> bool:
        if self.fail_with:
            self.errors = list(self.fail_with)
            return False
        for vi in onnx.load(path).graph.input:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1
                for d in vi.type.tensor_type.shape.dim
            )
            self.network.inputs.append(types.SimpleNamespace(name=vi.name, shape=dims))
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class _Builder:
    last: _Builder

    def __init__(self, logger: object) -> None:
        self.flags: list[str] = []
        self.profiles: list[dict[str, tuple[Any, ...]]] = []
        self.pool: dict[str, int] = {}
        _Builder.last = self

    def create_network(self, flags: int = 0) -> _Net:
        assert flags == 0
        return _Net()

    def create_builder_config(self) -> Any:
        b = self
        return types.SimpleNamespace(
            set_flag=b.flags.append,
            set_memory_pool_limit=lambda pool, size: b.pool.__setitem__(pool, size),
            add_optimization_profile=lambda p: b.profiles.append(p.shapes),
        )

    def create_optimization_profile(self) -> Any:
        shapes: dict[str, tuple[Any, ...]] = {}
        return types.SimpleNamespace(
            shapes=shapes, set_shape=lambda n, lo, opt, hi: shapes.__setitem__(n, (lo, opt, hi))
        )

    def build_serialized_network(self, network: _Net, config: object) -> bytes:
        return b"ENGINE:" + ",".join(t.name for t in network.inputs).encode()


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    mod.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, sev: None})  # type: ignore[attr-defined]
    mod.Builder = _Builder  # type: ignore[attr-defined]
    mod.OnnxParser = _Parser  # type: ignore[attr-defined]
    mod.BuilderFlag = types.SimpleNamespace(FP16="FP16")  # type: ignore[attr-defined]
    mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    mod.Dims = tuple  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    monkeypatch.setattr(_Parser, "fail_with", [])
    return mod


def test_static_build_writes_engine(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    onnx_path = linear_ln_gelu(tmp_path / "m.onnx")
    out = build_engine(onnx_path, tmp_path / "e" / "m.engine", fp16=True, workspace_bytes=1 << 20)
    assert out.read_bytes() == b"ENGINE:x"
    assert _Builder.last.flags == ["FP16"]
    assert _Builder.last.pool == {"WORKSPACE": 1 << 20}
    assert _Builder.last.profiles == []  # static input: no optimization profile
    with pytest.raises(ValueError, match="static"):
        build_engine(onnx_path, tmp_path / "x.engine", input_shapes={"x": (4, 4, 8)})


def test_dynamic_batch_needs_shapes(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    onnx_path = linear_ln_gelu(tmp_path / "dyn.onnx", batch="B")
    with pytest.raises(ValueError, match="dynamic shape"):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()
    build_engine(onnx_path, tmp_path / "m.engine", input_shapes={"x": (8, 4, 8)})
    assert _Builder.last.profiles == [{"x": ((8, 4, 8),) * 3}]


def test_parse_errors_are_reported(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    onnx_path = linear_ln_gelu(tmp_path / "m.onnx")
    _Parser.fail_with = ["node 3 (Erf): unsupported", "node 4: bad"]
    with pytest.raises(RuntimeError, match="unsupported") as exc:
        build_engine(onnx_path, tmp_path / "m.engine")
    assert "node 4: bad" in str(exc.value)


def test_runner_needs_cuda(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible; the no-GPU path cannot be exercised")
    runner = TensorRTRunner(tmp_path / "m.onnx", tmp_path / "m.engine")
    with pytest.raises(BackendUnavailable, match="CUDA GPU"):
        runner.load()
