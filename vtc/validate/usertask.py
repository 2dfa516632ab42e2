"""A task metric of the user's own: `validate.task: "package.module:function"`.

The function is imported from the import path the user gave (the Python path, and
the current directory) — nothing is downloaded — and called once, after the
parity and fidelity tiers::

    fn(inputs, baseline, compressed) -> {"metric name": number, ...}

    inputs      float32 [N, C, H, W]: the validation inputs, normalised as the engines
                see them (N real images; batch padding removed)
    baseline    {output name: array [N, ...]}: every output of the uncompressed engine
    compressed  {output name: array [N, ...]}: every output of the compressed engine

The metrics go into report.json (`task`) and can be gated (`gates: {min_task.NAME: x}`
or `max_task.NAME`). Anything that goes wrong — the import, an exception inside the
function, a result that is not a mapping of names to finite numbers — is an input
error naming the function.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vtc.errors import InputError, one_line

TaskFn = Callable[[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]], Any]
SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class TaskError(InputError):
    """The user's task function cannot be imported or misbehaved (exit 2)."""


def load_task(spec: str) -> TaskFn:
    """The function named by `spec` (`package.module:function`)."""
    if not SPEC.match(spec):
        raise TaskError(f"validate.task {spec!r} is not an import path; give "
                        "'package.module:function'")
    module_name, fn_name = spec.split(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TaskError(f"validate.task {spec!r}: cannot import {module_name} "
                        f"({type(exc).__name__}: {one_line(exc)[:200]}); make it importable "
                        "(install it, or run from its directory / set PYTHONPATH)") from exc
    finally:
        if added and os.getcwd() in sys.path:
            sys.path.remove(os.getcwd())
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        what = "no attribute" if fn is None else f"a non-callable {type(fn).__name__}"
        raise TaskError(f"validate.task {spec!r}: {module_name} has {what} {fn_name!r}; name a "
                        "function fn(inputs, baseline, compressed) -> dict of numbers")
    return fn  # type: ignore[no-any-return]


def run_task(fn: TaskFn, spec: str, inputs: np.ndarray, baseline: dict[str, np.ndarray],
             compressed: dict[str, np.ndarray]) -> dict[str, float]:
    """Call the task function (module docstring) and check what it returns: a mapping of
    metric names (identifiers) to finite numbers, at least one."""
    try:
        result = fn(inputs.copy(), {k: v.copy() for k, v in baseline.items()},
                    {k: v.copy() for k, v in compressed.items()})
    except Exception as exc:
        raise TaskError(f"validate.task {spec!r} raised {type(exc).__name__}: "
                        f"{one_line(exc)[:200]}") from exc
    if not isinstance(result, Mapping) or not result:
        raise TaskError(f"validate.task {spec!r} returned {type(result).__name__}"
                        f"{'' if result else ' (empty)'}; return a dict of metric names to "
                        "numbers, e.g. {'exact_match': 0.9}")
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise TaskError(f"validate.task {spec!r} returned the metric name {key!r}; names "
                            "are identifiers (letters, digits, _)")
        number = isinstance(value, int | float | np.integer | np.floating)
        if isinstance(value, bool | np.bool_) or not number or not math.isfinite(float(value)):
            raise TaskError(f"validate.task {spec!r} returned {key}={value!r} "
                            f"({type(value).__name__}); every metric must be a finite number")
        metrics[key] = float(value)
    return metrics


__all__ = ["TaskError", "load_task", "run_task"]
