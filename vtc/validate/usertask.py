"""A task metric of the user's own: `validate.task: "package.module:function"`.

The function is imported from the import path the user gave (the Python path, every
PYTHONPATH entry even where the interpreter ignored the variable, and the current
directory) — nothing is downloaded — and called once, after the parity and fidelity
tiers::

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
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vtc.errors import InputError, one_line

TaskFn = Callable[[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]], Any]
SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class TaskError(InputError):
    """The user's task function cannot be imported or misbehaved (exit 2)."""


def search_path() -> list[str]:
    """Where a task module is looked for, after `sys.path`: every PYTHONPATH entry
    (absolute, against the current directory, as python resolves them; also when the
    interpreter ignored the variable, as `python -E`/`-I` and some launchers do) and the
    current directory."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    have = {os.path.abspath(p or os.curdir) for p in sys.path}
    out: list[str] = []
    for entry in [*entries, os.curdir]:
        full = os.path.abspath(entry)
        if full not in have and full not in out:
            out.append(full)
    return out


def _not_found(spec: str, exc: ModuleNotFoundError) -> TaskError:
    """The module (or a parent package) is on none of the paths: say where vtc looked."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    where = (f"PYTHONPATH ({', '.join(os.path.abspath(e) for e in entries)})" if entries
             else "PYTHONPATH (not set)")
    bad = [e for e in entries if not os.path.isdir(e)]
    hint = f"; PYTHONPATH entry {bad[0]} is not a directory" if bad else ""
    name = exc.name or spec.split(":")[0]
    return TaskError(f"validate.task {spec!r}: no module {name} in {where}, the current "
                     f"directory ({os.getcwd()}) or the installed packages{hint}; put the "
                     f"folder that holds {name.replace('.', '/')}.py on PYTHONPATH, or "
                     "install it")


def load_task(spec: str) -> TaskFn:
    """The function named by `spec` (`package.module:function`), looked up on
    `sys.path`, then `search_path()`."""
    if not SPEC.match(spec):
        raise TaskError(f"validate.task {spec!r} is not an import path; give "
                        "'package.module:function'")
    module_name, fn_name = spec.split(":")
    if module_name.endswith(".py"):
        raise TaskError(f"validate.task {spec!r}: {module_name} is a file name; give the "
                        f"module, '{module_name[:-3]}:{fn_name}', with its folder on PYTHONPATH")
    added = search_path()
    sys.path.extend(added)
    importlib.invalidate_caches()  # folders created since start-up are searched afresh
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise _not_found(spec, exc) from exc
        raise _import_failed(spec, module_name, exc) from exc
    except Exception as exc:
        raise _import_failed(spec, module_name, exc) from exc
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        what = "no attribute" if fn is None else f"a non-callable {type(fn).__name__}"
        raise TaskError(f"validate.task {spec!r}: {module_name} has {what} {fn_name!r}; name a "
                        "function fn(inputs, baseline, compressed) -> dict of numbers")
    return fn  # type: ignore[no-any-return]


def _import_failed(spec: str, module_name: str, exc: Exception) -> TaskError:
    """The module was found, but running it raised (a missing dependency, a bug)."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not f.filename.startswith("<frozen")]
    where = f" at {user[-1].filename}:{user[-1].lineno}" if user else ""
    return TaskError(f"validate.task {spec!r}: {module_name} was found but importing it "
                     f"raised {type(exc).__name__}: {one_line(exc)[:200]}{where}; fix the "
                     "module or install what it imports")


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
