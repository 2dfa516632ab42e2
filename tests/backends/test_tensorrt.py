from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.backends.tiny_models import linear_ln_gelu
from vtc.backends.base import BackendUnavailable
from vtc.backends.ort import OrtRunner
from vtc.backends.tensorrt import NOT_INSTALLED, TensorRTRunner, build_engine, tensorrt_available


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_detects_stub_only_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    # tensorrt-stubs leaves an importable namespace package without the bindings.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert tensorrt_available() is False
    real = types.ModuleType("tensorrt")
    real.Builder = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", real)
    assert tensorrt_available() is True


def test_unavailable_message_when_absent(tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed here; the 'not installed' path cannot be exercised")
    onnx_path = linear_ln_gelu(tmp_path / "m.onnx")
    runner = TensorRTRunner(onnx_path, tmp_path / "m.engine")
    with pytest.raises(BackendUnavailable) as exc:
        runner.load()
    assert str(exc.value) == NOT_INSTALLED
    assert "ONNX Runtime" in str(exc.value)
    with pytest.raises(BackendUnavailable, match="not installed"):
        build_engine(onnx_path, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_build_and_infer_matches_ort(tmp_path: Path) -> None:
    if not tensorrt_available():
        pytest.skip("TensorRT is not installed (needs NVIDIA's index and a GPU)")
    if not _has_cuda():
        pytest.skip("TensorRT is installed but torch sees no CUDA GPU")
    onnx_path = linear_ln_gelu(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    with TensorRTRunner(onnx_path, engine) as trt_runner:
        assert engine.is_file()
        assert trt_runner.input_names == ["x"] and trt_runner.output_names == ["y"]
        got = trt_runner.infer({"x": x})
    with OrtRunner(onnx_path) as ort_runner:
        want = ort_runner.infer({"x": x})
    assert got["y"].shape == (2, 4, 8)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-3, atol=1e-3)
