"""SOURCE resolution: each bad input is a SourceError that says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtc.source import SourceError, resolve


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        resolve(str(tmp_path / "nope.onnx"))
    with pytest.raises(SourceError, match="not a file, a directory, a zoo name"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="hub id"):
        resolve("someorg/not-in-cache")


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no config\.json"):
        resolve(str(tmp_path))


def test_unreadable_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match="unreadable"):
        resolve(str(tmp_path))


def test_hf_dir_and_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    src = resolve(str(tmp_path))
    assert src.kind == "hf" and src.model_type == "vit" and len(src.digest()) == 64
    snap = tmp_path / "hub" / "models--acme--tiny-vit" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "deit"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = resolve("acme/tiny-vit")
    assert cached.path == snap and cached.model_type == "deit"


def test_other_file_kinds(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(SourceError, match=r"not \.onnx"):
        resolve(str(f))
