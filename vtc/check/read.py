"""Read one side of a comparison: a bundle directory or a report.json file.

Everything that makes two reports incomparable is an `InputError` (exit 2) with
one line that names the file and the fix: missing, not JSON, another report
schema version, not a vtc report; and, for a pair, another model, batch,
precision, CUDA graph or engine (`incomparable`; `vtc report diff` shows such a pair
side by side without a verdict).

A vision-language report (`kind: "vlm"`) is read as a `VlmReport` (`vtc.check.vlm`
compares two of them); an encoder report and a VLM one are no pair.

Reports of schema version 2 are read too, brought up to version 3 on the way in
(`_upgrade`: version 3 made `throughput.speedup` the paired estimate), so a stored
baseline stays usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtc.errors import InputError
from vtc.report import SCHEMA_VERSION, Report
from vtc.report_vlm import VlmReport

__all__ = ["CheckInputError", "Side", "incomparable", "read_side"]


class CheckInputError(InputError):
    """A report that cannot be read or compared."""


@dataclass(frozen=True)
class Side:
    report: Report | VlmReport  # an encoder bundle's report or a vision-language one's
    label: str  # what the user gave: named in the table and in errors


def _report_path(given: Path, role: str) -> Path:
    if given.is_dir():
        path = given / "report.json"
        if not path.is_file():
            raise CheckInputError(f"{role} {given}: a directory without report.json; give a "
                                  "bundle directory written by vtc-export or its report.json")
        return path
    if not given.exists():
        raise CheckInputError(f"{role} {given}: no such file or directory; give a bundle "
                              "directory or its report.json")
    if not given.is_file():
        raise CheckInputError(f"{role} {given}: not a regular file; give a report.json")
    return given


READABLE = (2, SCHEMA_VERSION)  # report schema versions this vtc reads


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A version-2 report as version 3: the median-latency speedup moves to
    `speedup_median`, `speedup` (and `efficiency`) become the paired estimate's."""
    th = data.get("throughput")
    if data.get("schema_version") == 2 and isinstance(th, dict) and isinstance(
            th.get("speedup_ci"), dict) and isinstance(th.get("speedup"), int | float):
        est, old = th["speedup_ci"].get("estimate"), th["speedup"]
        if isinstance(est, int | float) and old:
            th.update(speedup_median=old, speedup=est,
                      efficiency=th.get("efficiency", 0.0) * est / old)
    data["schema_version"] = SCHEMA_VERSION
    return data


def read_side(given: Path, role: str) -> Side:
    """The report at `given` (a bundle dir or report.json); `role` names it in errors."""
    path = _report_path(Path(given), role)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckInputError(f"{role} {path}: cannot be read ({exc}); give a readable "
                              "report.json") from None
    except json.JSONDecodeError as exc:
        raise CheckInputError(f"{role} {path}: not valid JSON (line {exc.lineno}: {exc.msg}); "
                              "the file is corrupt: restore it or rebuild the bundle") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise CheckInputError(f"{role} {path}: not a vtc report (no schema_version); give the "
                              "report.json of a bundle written by vtc-export")
    if data.get("kind") == "vlm":
        return _vlm_side(data, path, given, role)
    if "kind" in data:  # encoder reports carry no kind
        raise CheckInputError(f"{role} {path}: a report of kind {data['kind']!r}, which this vtc "
                              "does not know (it reads encoder reports and kind 'vlm'); give "
                              "the report.json of a bundle written by vtc-export")
    version = data["schema_version"]
    if version not in READABLE:
        raise CheckInputError(
            f"{role} {path}: report schema version {version}, this vtc reads versions "
            f"{', '.join(map(str, READABLE))}; rebuild the {role} with this vtc (vtc-export) "
            "to compare")
    try:
        report = Report.from_dict(_upgrade(data))
    except Exception as exc:  # pydantic.ValidationError: name the first problem
        raise CheckInputError(f"{role} {path}: not a valid vtc report ({_first_problem(exc)}); "
                              "rebuild it with vtc-export") from None
    return Side(report, str(given))


def _first_problem(exc: Exception) -> str:
    """The first error of a pydantic ValidationError (its lines 2–3), else the message."""
    lines = str(exc).splitlines()
    return " ".join(lines[1:3]).strip() if len(lines) > 2 else str(exc)


def _vlm_side(data: dict[str, Any], path: Path, given: Path, role: str) -> Side:
    from vtc.check.vlm import from_dict
    from vtc.report_vlm import VLM_SCHEMA_VERSION

    version = data["schema_version"]
    if version != VLM_SCHEMA_VERSION:
        raise CheckInputError(
            f"{role} {path}: vision-language report schema version {version}, this vtc reads "
            f"version {VLM_SCHEMA_VERSION}; rebuild the {role} with this vtc (vtc-export) to "
            "compare")
    try:
        return Side(from_dict(data), str(given))
    except Exception as exc:  # pydantic.ValidationError: name the first problem
        raise CheckInputError(f"{role} {path}: not a valid vtc vision-language report "
                              f"({_first_problem(exc)}); rebuild it with vtc-export") from None


def _batch(r: Report) -> int | None:
    return r.throughput.batch if r.throughput is not None else None


def incomparable(base: Report, now: Report) -> list[str]:
    """Why two reports cannot be compared (empty: they can). A new checkpoint, recipe,
    vtc or onnxruntime is what a check is for; another model shape, batch, precision
    or engine is not."""
    facts = [
        ("model type", base.source.model_type, now.source.model_type),
        ("tokens in", base.budget.tokens_in, now.budget.tokens_in),
        ("transformer blocks", base.graph.blocks, now.graph.blocks),
        ("compared output", base.output, now.output),
        ("timed batch", _batch(base), _batch(now)),
        ("precision", base.engine.precision, now.engine.precision),
        ("CUDA graph", base.engine.cuda_graph, now.engine.cuda_graph),
        ("engine", base.engine.kind, now.engine.kind),
    ]
    return [f"{what}: baseline {a}, now {b}" for what, a, b in facts
            if a != b and not (what == "timed batch" and None in (a, b))]
