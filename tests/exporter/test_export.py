"""export_onnx details: TorchScript path, overwriting, static shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.tiny import IMAGE, build_variant, pixels
from vtc.exporter.export import export_onnx


def test_torchscript_exporter(tmp_path: Path) -> None:
    family, model = build_variant("deit-teacher")
    path = export_onnx(family, model, 1, IMAGE, tmp_path / "ts.onnx", dynamo=False)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    x = pixels(batch=1)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": x.numpy()}
    )
    with torch.no_grad():
        want = family.wrap_for_export(model)(x)
    assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4


def test_overwrites_atomically_and_inlines_weights(tmp_path: Path) -> None:
    family, model = build_variant("siglip")
    target = tmp_path / "sub" / "model.onnx"
    target.parent.mkdir()
    target.write_text("stale")
    export_onnx(family, model, 3, IMAGE, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(target), load_external_data=False)
    assert all(not init.external_data for init in proto.graph.initializer)
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [3, 64]


def test_dinov2_other_resolution(tmp_path: Path) -> None:
    # DINOv2 interpolates its position embeddings: export at 48 px (config says 32).
    from vtc.budget import no_budget
    from vtc.exporter.eager import run_reference

    family, model = build_variant("dinov2")
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    geo = family.geometry(model, 48)
    assert geo.tokens == 1 + 36
    ref = run_reference(family, model, x, no_budget(geo))["pooler_output"]
    with torch.no_grad():
        (want,) = family.wrap_for_export(model)(x)
    torch.testing.assert_close(ref, want, rtol=0, atol=1e-5)
    path = export_onnx(family, model, 2, 48, tmp_path / "d48.onnx")
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": x.numpy()}
    )
    assert np.abs(got - ref.numpy()).max() <= 1e-4


def test_large_models_use_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtc.passes import model_io

    monkeypatch.setattr(model_io, "INLINE_LIMIT_BYTES", 0)
    family, model = build_variant("clip")
    path = export_onnx(family, model, 1, IMAGE, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    x = pixels(batch=1)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": x.numpy()}
    )
    with torch.no_grad():
        (want,) = family.wrap_for_export(model)(x)
    assert np.abs(got - want.numpy()).max() <= 1e-4


def test_a_repeated_export_comes_from_memory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model, weights and arguments export once per process: the second file
    is written from memory, byte for byte; other weights or another batch export anew."""
    from vtc.exporter import export as ex
    from vtc.exporter import memo

    memo.clear()
    family, model = build_variant("vit-cls")
    calls: list[Path] = []
    real = ex.export_module
    monkeypatch.setattr(ex, "export_module", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = export_onnx(family, model, 2, IMAGE, tmp_path / "a" / "baseline.onnx")
    again = export_onnx(family, model, 2, IMAGE, tmp_path / "b" / "baseline.onnx")
    assert len(calls) == 1 and first.read_bytes() == again.read_bytes()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["baseline.onnx"]
    export_onnx(family, model, 3, IMAGE, tmp_path / "b" / "baseline.onnx")
    assert len(calls) == 2  # another batch
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    export_onnx(family, model, 2, IMAGE, tmp_path / "b" / "baseline.onnx")
    assert len(calls) == 3  # other weights
    monkeypatch.setattr(memo, "MAX_MODEL_BYTES", 0)
    assert memo.key(family.name, model, ()) is None  # too large to remember
    memo.clear()
