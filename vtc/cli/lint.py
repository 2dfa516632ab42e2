"""``vtc lint-trt``: an ONNX file against TensorRT 10's ONNX-parser limits
(`vtc.backends.trt_lint`), without TensorRT installed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vtc.errors import InputError, guard

__all__ = ["lint_trt"]


@click.command("lint-trt")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="print the findings as one JSON object (errors, warnings, findings)")
def lint_trt(model: Path, as_json: bool) -> None:
    """Check MODEL.onnx against TensorRT 10's ONNX parser: unsupported and custom-domain
    ops, per-op limits (TopK's K constant and <= 3840, scatter without reduction, no
    NonZero, Resize modes, constant axes), dtypes TensorRT lacks, and dynamic inputs that
    need an optimisation profile. Each finding names the node, the problem and the fix.
    vtc-export runs the same lint on every bundle's model.onnx (report.json: trt_lint).

    \b
    Examples:
      vtc lint-trt out/model.onnx
      vtc lint-trt third_party.onnx --json > lint.json

    \b
    Exit codes: 0 no errors (warnings allowed), 1 errors found, 2 the file is missing or
    is not an ONNX model.
    """
    def _run() -> int:
        from vtc.backends.trt_lint import format_finding, lint_file
        from vtc.report import to_jsonable

        if not model.is_file():
            raise InputError(f"{model}: no such file; give an .onnx file")
        try:
            info = lint_file(model)
        except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
            why = f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else \
                type(exc).__name__
            raise InputError(f"{model}: not a readable ONNX model ({why}); give the .onnx "
                             "file an exporter wrote") from exc
        if as_json:
            click.echo(json.dumps(to_jsonable(info), indent=2, sort_keys=True))
        else:
            for f in info.findings:
                click.echo(format_finding(f))
            click.echo(f"{model}: {info.errors} error(s), {info.warnings} warning(s) for "
                       "TensorRT 10")
        return 1 if info.errors else 0

    guard(_run)
