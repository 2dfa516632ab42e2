"""Task functions for `validate.task` tests (imported by vtc as `tests.task_fns:NAME`)."""

from __future__ import annotations

from typing import Any

import numpy as np

SEEN: list[dict[str, Any]] = []


def record(inputs: np.ndarray, baseline: dict[str, np.ndarray],
           compressed: dict[str, np.ndarray]) -> dict[str, float]:
    """Remember what vtc passed; return the mean |difference| of the first output."""
    SEEN.append({"inputs": inputs, "baseline": baseline, "compressed": compressed})
    name = next(iter(baseline))
    return {"mean_abs_diff": float(np.abs(baseline[name] - compressed[name]).mean()),
            "count": len(inputs)}


def boom(inputs: np.ndarray, baseline: dict[str, np.ndarray],
         compressed: dict[str, np.ndarray]) -> dict[str, float]:
    raise RuntimeError("the decoder checkpoint is missing")


def words(inputs: np.ndarray, baseline: dict[str, np.ndarray],
          compressed: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"exact_match": "high"}


def nan(inputs: np.ndarray, baseline: dict[str, np.ndarray],
        compressed: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"exact_match": float("nan")}


def listed(inputs: np.ndarray, baseline: dict[str, np.ndarray],
           compressed: dict[str, np.ndarray]) -> list[float]:
    return [1.0]


NOT_A_FUNCTION = 3
