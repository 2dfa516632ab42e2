from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.backends.tiny_models import linear_ln_gelu, reference_linear_ln_gelu
from vtc.backends.base import BackendUnavailable
from vtc.backends.ort import (
    OrtRunner,
    available_providers,
    fused_op_counts,
    fusion_summary,
    op_counts,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return linear_ln_gelu(tmp_path / "m.onnx")


def test_infer_matches_numpy_reference(model: Path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 4, 8)).astype(np.float32)
    with OrtRunner(model) as r:
        assert r.name == "ort"
        assert r.input_names == ["x"]
        assert r.output_names == ["y"]
        assert r.providers == ["CPUExecutionProvider"]
        out = r.infer({"x": x})
    assert set(out) == {"y"}
    assert out["y"].shape == (2, 4, 8)
    np.testing.assert_allclose(out["y"], reference_linear_ln_gelu(x), rtol=1e-4, atol=1e-4)


def test_names_need_load(model: Path) -> None:
    r = OrtRunner(model)
    with pytest.raises(RuntimeError, match="load"):
        _ = r.input_names
    r.load()
    r.close()
    with pytest.raises(RuntimeError, match="load"):
        r.infer({"x": np.zeros((2, 4, 8), np.float32)})


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        OrtRunner(tmp_path / "nope.onnx").load()


def test_optimized_model_written_and_fusions_found(model: Path, tmp_path: Path) -> None:
    opt = tmp_path / "sub" / "opt.onnx"
    with OrtRunner(model, optimized_model_path=opt, intra_op_threads=1):
        pass
    assert opt.is_file()
    # The source graph only has primitive ops; nothing counts as fused there.
    assert fused_op_counts(model) == {}
    counts = fused_op_counts(opt)
    assert counts == {"Gelu": 1, "Gemm": 1, "LayerNormalization": 1}
    all_ops = op_counts(opt)
    assert "Erf" not in all_ops and "ReduceMean" not in all_ops
    gelu = [n for n in onnx.load(str(opt)).graph.node if n.op_type == "Gelu"]
    assert gelu[0].domain == "com.microsoft"


def test_fusion_summary_detects_lost_fusion(model: Path, tmp_path: Path) -> None:
    broken = linear_ln_gelu(tmp_path / "broken.onnx", gelu_half=0.49)
    base_opt, comp_opt = tmp_path / "base_opt.onnx", tmp_path / "comp_opt.onnx"
    with OrtRunner(model, optimized_model_path=base_opt):
        pass
    with OrtRunner(broken, optimized_model_path=comp_opt):
        pass
    s = fusion_summary(fused_op_counts(base_opt), fused_op_counts(comp_opt))
    assert s["lost"] == {"Gelu": 1}
    assert s["baseline"]["Gelu"] == 1
    assert "Gelu" not in s["compressed"]
    assert s["compressed"]["LayerNormalization"] == 1


def test_fusion_summary_counts() -> None:
    s = fusion_summary(
        {"Gelu": 12, "LayerNormalization": 25, "Attention": 12},
        {"Gelu": 10, "LayerNormalization": 25, "FusedMatMul": 3},
    )
    assert s["lost"] == {"Attention": 12, "Gelu": 2}
    assert s["gained"] == {"FusedMatMul": 3}
    assert s["baseline"]["Attention"] == 12
    assert fusion_summary({"Gelu": 1}, {"Gelu": 1})["lost"] == {}


def test_available_providers_has_cpu() -> None:
    assert "CPUExecutionProvider" in available_providers()


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "TensorrtExecutionProvider"])
def test_missing_gpu_provider_raises(model: Path, provider: str) -> None:
    if provider in available_providers():
        pytest.skip(f"{provider} is available in this onnxruntime build")
    r = OrtRunner(model, providers=[provider, "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailable) as exc:
        r.load()
    msg = str(exc.value)
    assert provider in msg
    assert "fell back" in msg and "CPUExecutionProvider" in msg


def test_missing_gpu_provider_with_fallback_records_cpu(model: Path) -> None:
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("CUDAExecutionProvider is available in this onnxruntime build")
    r = OrtRunner(model, providers=["CUDAExecutionProvider"], allow_fallback=True)
    # requested before load, CPU always appended so unsupported nodes have a home
    assert r.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with r:
        assert r.providers == ["CPUExecutionProvider"]
        assert r.requested_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        out = r.infer({"x": np.ones((2, 4, 8), np.float32)})
    assert np.isfinite(out["y"]).all()
