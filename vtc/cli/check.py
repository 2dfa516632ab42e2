"""``vtc check`` (a bundle against a stored baseline, with a verdict) and ``vtc report``
(``diff``: the same table without one; ``show``: report.md in the terminal)."""

from __future__ import annotations

from pathlib import Path

import click

from vtc.check import CheckInputError, compare, read_side
from vtc.check.render import junit_xml, summary, table, to_json
from vtc.errors import guard
from vtc.recipe import CheckCfg
from vtc.util import write_atomic
from vtc.validate.report import render_markdown

__all__ = ["check", "report"]

_TOLERANCES = ", ".join(CheckCfg.model_fields)


def _overrides(pairs: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in CheckCfg.model_fields:
            raise CheckInputError(f"--tolerance {pair!r}: expected NAME=VALUE with NAME one of "
                                  f"{_TOLERANCES}")
        try:
            out[key] = float(value)
        except ValueError:
            raise CheckInputError(f"--tolerance {pair!r}: {value!r} is not a number") from None
    return out


def _target(path: Path | None, flag: str, inputs: list[Path]) -> None:
    """Refuse an output file that would overwrite an input or has no directory."""
    if path is None:
        return
    if any(path.resolve() == p.resolve() or path.resolve() == (p / "report.json").resolve()
           for p in inputs):
        raise CheckInputError(f"{flag} {path}: that is one of the reports being compared; "
                              "give another file name")
    if path.is_dir():
        raise CheckInputError(f"{flag} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise CheckInputError(f"{flag} {path}: directory {path.parent} does not exist; "
                              "create it first")


@click.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--baseline", required=True, type=click.Path(path_type=Path),
              help="the stored baseline: a bundle directory or its report.json")
@click.option("-t", "--tolerance", "tolerance", multiple=True, metavar="NAME=VALUE",
              help=f"override a tolerance of the bundle recipe's check: section ({_TOLERANCES})")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="also write the comparison as JSON")
@click.option("--junit", "junit_out", type=click.Path(path_type=Path), default=None,
              help="also write one JUnit XML test case per metric and gate")
def check(bundle: Path, baseline: Path, tolerance: tuple[str, ...], json_out: Path | None,
          junit_out: Path | None) -> None:
    """Compare BUNDLE (a directory or its report.json) with a stored baseline.

    Tokens and FLOPs must match exactly; parity must stay within its gate; fidelity,
    probe accuracy and dense scores may not drop by more than their tolerance; the
    speedup fails only when its bootstrap interval (both runs' noise) lies wholly
    below the allowed drop; absolute img/s is compared only on the same machine
    fingerprint; a fusion the baseline had must not be lost; BUNDLE's own gates
    must pass. Defaults (the recipe's check: section, overridable with -t):
    max_speedup_drop 0.05, max_throughput_drop 0.10, max_cosine_drop 0.002,
    max_agreement_drop 0.02, max_accuracy_drop 0.5 (points), max_dense_drop 0.02,
    max_parity_diff 1e-4 (when the recipe has no parity gate), confidence 0.95.

    \b
    Examples:
      vtc check out/new --baseline baselines/dinov2-small
      vtc check out/new --baseline base/report.json --junit vtc.xml --json vtc.json
      vtc check out/new --baseline base -t max_speedup_drop=0.10

    \b
    Exit codes: 0 no regression, 1 a regression, 2 the reports cannot be compared
    (another model, batch, precision or schema version; a missing or corrupt file;
    a tolerance out of range), 3 an internal error.
    """

    def _run() -> int:
        overrides = _overrides(tolerance)
        _target(json_out, "--json", [bundle, baseline])
        _target(junit_out, "--junit", [bundle, baseline])
        cmp = compare(read_side(baseline, "baseline"), read_side(bundle, "bundle"), overrides)
        click.echo(table(cmp))
        if cmp.machine_differences:
            click.echo("machines differ: " + "; ".join(cmp.machine_differences))
        if json_out is not None:
            write_atomic(json_out, to_json(cmp))
        if junit_out is not None:
            write_atomic(junit_out, junit_xml(cmp))
        click.echo(summary(cmp))
        return 0 if cmp.passed else 1

    guard(_run)


@click.group("report", context_settings={"help_option_names": ["-h", "--help"]})
def report() -> None:
    """Read bundles' reports: show one, or diff two.

    \b
    Examples:
      vtc report show out/dinov2-small
      vtc report diff baselines/dinov2-small out/dinov2-small
    """


@report.command("diff")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
def diff(a: Path, b: Path) -> None:
    """The metric table of B against A (bundles or report.json files), no verdict.

    \b
    Example:
      vtc report diff baselines/dinov2-small out/dinov2-small
    """

    def _run() -> int:
        click.echo(table(compare(read_side(a, "A"), read_side(b, "B")), verdicts=False))
        return 0

    guard(_run)


@report.command("show")
@click.argument("bundle", type=click.Path(path_type=Path))
def show(bundle: Path) -> None:
    """Print BUNDLE's report.md (a bundle directory, its report.md or its report.json).

    \b
    Example:
      vtc report show out/dinov2-small
    """

    def _run() -> int:
        md = bundle / "report.md" if bundle.is_dir() else bundle
        if md.suffix == ".md" and md.is_file():
            click.echo(md.read_text(encoding="utf-8"), nl=False)
        elif md.suffix == ".json" or (bundle.is_dir() and (bundle / "report.json").is_file()):
            click.echo(render_markdown(read_side(bundle, "bundle").report), nl=False)
        else:
            raise CheckInputError(f"{bundle}: no report.md or report.json there; give a bundle "
                                  "directory written by vtc-export")
        return 0

    guard(_run)
