"""Resolving SOURCE: an HF checkpoint directory, a hub id in the local cache,
or an .onnx file. Every failure is a SourceError with the fix in its text."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vtc import zoo
from vtc.errors import InputError
from vtc.passes.model_io import external_files
from vtc.util import sha256_file


class SourceError(InputError):
    """SOURCE is missing, unreadable or of an unsupported kind (an input error)."""


@dataclass(frozen=True)
class Source:
    kind: Literal["hf", "onnx"]
    path: Path  # the checkpoint directory or the .onnx file
    spec: str  # what the user typed
    model_type: str | None = None

    def digest(self) -> str:
        """sha256 over the weight files (hf) or the .onnx file and its external data."""
        h = hashlib.sha256()
        files = [self.path, *external_files(self.path)] if self.kind == "onnx" else sorted(
            p for p in self.path.iterdir()
            if p.suffix in {".safetensors", ".bin", ".json"} and p.is_file()
        )
        for f in files:
            h.update(f.name.encode())
            sha256_file(f, h)
        return h.hexdigest()


def _hub_cache_dir(spec: str) -> Path | None:
    """The newest snapshot of `org/name` in the local Hugging Face cache."""
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        return None
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    snaps = hub / f"models--{spec.replace('/', '--')}" / "snapshots"
    if not snaps.is_dir():
        return None
    cands = sorted((p for p in snaps.iterdir() if (p / "config.json").is_file()),
                   key=lambda p: p.stat().st_mtime)
    return cands[-1] if cands else None


def _not_a_file(path: Path) -> str:
    """What a path that is not a regular file is, in words."""
    if path.is_dir():
        return "a directory, not a file"
    return ("no such file" if not path.exists() else
            "not a regular file (a device, pipe or socket)")


def resolve(spec: str) -> Source:
    path = Path(spec)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise SourceError(f"SOURCE {spec}: {_not_a_file(path)}; check the path")
        if not os.access(path, os.R_OK):
            raise SourceError(f"SOURCE {spec}: not readable; check its permissions")
        return Source("onnx", path, spec)
    if not path.exists():
        if spec in zoo.names():  # a model-zoo name: fetched once into $VTC_HOME
            return resolve(str(zoo.fetch(spec)))
        cached = _hub_cache_dir(spec)
        if cached is None:
            raise SourceError(
                f"SOURCE {spec}: not a file, a directory, a zoo name (`vtc zoo list`) or a "
                "hub id in the local cache "
                "(the hub is not reachable from vtc: download the checkpoint first and give "
                "its directory)"
            )
        path = cached
    if path.is_file():
        raise SourceError(
            f"SOURCE {spec}: a file that is not .onnx; give a checkpoint directory "
            "(config.json + model.safetensors) or an .onnx file"
        )
    if not path.is_dir():
        raise SourceError(f"SOURCE {spec}: {_not_a_file(path)}; give a checkpoint directory "
                          "(config.json + model.safetensors) or an .onnx file")
    if (path / "manifest.json").is_file() and (path / "report.json").is_file():
        raise SourceError(f"SOURCE {spec}: a bundle vtc wrote (manifest.json, report.json), not "
                          "a checkpoint; give the original checkpoint directory, or the "
                          "bundle's baseline.onnx (the uncompressed graph) when it has one")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise SourceError(
            f"SOURCE {spec}: the directory has no config.json; give a Hugging Face "
            "checkpoint directory (config.json + model.safetensors)"
        )
    try:
        config = json.loads(cfg.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"SOURCE {spec}: config.json is not readable UTF-8 JSON "
                          f"({type(exc).__name__}: {exc}); give the checkpoint's own "
                          "config.json") from exc
    if not isinstance(config, dict):
        raise SourceError(f"SOURCE {spec}: config.json holds a {type(config).__name__}, not "
                          "a mapping; give the checkpoint's own config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SourceError(f"SOURCE {spec}: config.json has no model_type; give a Hugging "
                          "Face checkpoint's config.json (e.g. model_type: vit)")
    check_safetensors(path)
    return Source("hf", path, spec, model_type)


def check_safetensors(folder: Path) -> None:
    """Every *.safetensors file in `folder` has a complete header and data section
    (read without loading a tensor): SourceError naming the file otherwise."""
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with f.open("rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                header = json.loads(fh.read(n).decode("utf-8")) if 0 < n <= size - 8 else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            header = None
        ends = [v.get("data_offsets", [0, 0])[1] for k, v in (header or {}).items()
                if k != "__metadata__" and isinstance(v, dict)]
        if not isinstance(header, dict) or not all(isinstance(e, int) for e in ends) or (
                8 + n + max(ends, default=0) > size):
            raise SourceError(f"{f}: not a complete safetensors file ({size} bytes: empty, "
                              "truncated or corrupt); re-download or re-save the checkpoint")
        ints = [(k, v.get("dtype")) for k, v in header.items() if isinstance(v, dict)
                and k.endswith((".weight", ".bias")) and not str(v.get("dtype", "F")).startswith(
                    ("F", "BF"))]
        if ints:
            raise SourceError(f"{f}: {ints[0][0]} is {ints[0][1]}, and {len(ints)} weight(s) in "
                              "all are not floating point (F32, F16, BF16); give the "
                              "checkpoint's own float weights (quantized ones are not supported)")
