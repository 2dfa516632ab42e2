"""ONNX sources with external data, in every layout the onnx package writes, through
vtc-export; and bundles past protobuf's 2 GB limit written with external data (the
limit lowered for the test: no 2 GB model is built)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main
from vtc.passes import model_io
from vtc.util import sha256_file


def _save(src: Path, dst: Path, **kw: object) -> Path:
    (dst.parent / "weights").mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.load(str(src)), str(dst), save_as_external_data=True, size_threshold=0,
              **kw)  # type: ignore[arg-type]
    return dst


# layout name -> (writer of the source into a folder, the data files it must leave there)
LAYOUTS = {
    "one file beside it": lambda s, d: _save(s, d / "m.onnx", all_tensors_to_one_file=True,
                                             location="m.onnx.data"),
    "relative location in a subfolder": lambda s, d: _save(
        s, d / "m.onnx", all_tensors_to_one_file=True, location="weights/m.bin"),
    "one file per tensor": lambda s, d: _save(s, d / "m.onnx", all_tensors_to_one_file=False),
}


def _export(src: Path, out: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(export_main, [str(src), *FAST, "--set", "tome.r=2", "--no-bench",
                                           "--out", str(out), *extra])
    return res.exit_code, res.output


def test_the_dynamo_exporters_default_layout(tmp_path: Path, vit_model: torch.nn.Module
                                             ) -> None:
    """torch.onnx.export(dynamo=True, f=path) writes path + path.data; both are read."""
    src = tmp_path / "src" / "vit.onnx"
    src.parent.mkdir()
    torch.onnx.export(_Logits(vit_model).eval(), (torch.randn(2, 3, 32, 32),), str(src),
                      dynamo=True, input_names=["pixel_values"], verbose=False)
    assert (src.parent / "vit.onnx.data").is_file()
    code, text = _export(src, tmp_path / "out")
    assert code == 0, text


class _Logits(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).logits  # type: ignore[no-any-return]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_external_data_layouts(tmp_path: Path, vit_onnx: Path, layout: str) -> None:
    src = LAYOUTS[layout](vit_onnx, tmp_path / "src")
    data = model_io.external_files(src)
    assert data and all(p.is_file() for p in data)
    code, text = _export(src, tmp_path / "out")
    assert code == 0, text
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(man["files"]) == {"baseline.onnx", "model.onnx", "model.ort.onnx",
                                 "config.json", "preprocessor_config.json", "preprocess.json"}


def test_large_bundles_use_external_data(tmp_path: Path, vit_onnx: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the inline limit every graph keeps its weights in NAME.data beside it; the
    manifest lists each with its sha256 and the bundle's engine loads."""
    monkeypatch.setattr(model_io, "INLINE_LIMIT_BYTES", 1024)
    out = tmp_path / "out"
    code, text = _export(vit_onnx, out)
    assert code == 0, text
    files = json.loads((out / "manifest.json").read_text())["files"]
    for name in ("baseline.onnx", "model.onnx", "model.ort.onnx"):
        assert files[f"{name}.data"] == sha256_file(out / f"{name}.data")
        assert files[name] == sha256_file(out / name)
        assert model_io.external_files(out / name) == [out / f"{name}.data"]
    sess = ort.InferenceSession(str(out / "model.ort.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].shape == [2, 10]
