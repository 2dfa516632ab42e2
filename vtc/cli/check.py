"""``vtc check`` (a bundle against a stored baseline, with a verdict) and ``vtc report``
(``diff``: the same table without one; ``show``: report.md in the terminal)."""

from __future__ import annotations

from pathlib import Path

import click

from vtc.check import CheckInputError, compare, read_side
from vtc.check.render import junit_xml, summary, table, to_json
from vtc.errors import guard
from vtc.recipe import CheckCfg
from vtc.report import Report
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
    """Refuse, before any work, an output file that cannot be written where it is asked
    for: one of the inputs, a directory, a dangling link, something other than a regular
    file, or a directory that is missing or refuses a new file (probed the way the file
    is written: a temporary file beside it, then removed)."""
    import os
    import tempfile

    if path is None:
        return
    if any(path.resolve() == p.resolve() or path.resolve() == (p / "report.json").resolve()
           for p in inputs):
        raise CheckInputError(f"{flag} {path}: that is one of the reports being compared; "
                              "give another file name")
    if path.is_symlink() and not path.exists():
        raise CheckInputError(f"{flag} {path}: a symbolic link to {os.readlink(path)}, which "
                              "does not exist; remove the link or give another file name")
    if path.is_dir():
        raise CheckInputError(f"{flag} {path}: is a directory; give a file name")
    if path.exists() and not path.is_file():
        raise CheckInputError(f"{flag} {path}: not a regular file; give a file name")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CheckInputError(f"{flag} {path}: directory {parent} does not exist; "
                              "create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckInputError(f"{flag} {path}: cannot write in {parent} "
                              f"({exc.strerror or exc}); give a path in a writable "
                              "directory") from None


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
    must pass. --json and --junit are checked before anything is read or printed (a
    directory, a dangling link, a missing or unwritable directory: exit 2). Defaults
    (the recipe's check: section, overridable with -t):
    max_speedup_drop 0.05, max_throughput_drop 0.10, max_cosine_drop 0.002,
    max_agreement_drop 0.02, max_accuracy_drop 0.5 (points), max_dense_drop 0.02,
    max_parity_diff 1e-4 (when the recipe has no parity gate), confidence 0.95.
    VTC_SPEED_GATES=advisory (shared CI runners): a failing speed row is shown
    as info and decides no exit code.

    Two vision-language bundles compare the same way: visual tokens, LM tokens per
    layer and the prefill FLOPs ratio exactly; greedy tokens equal to the eager model
    (no drop) and first-logits / vision diffs within their gates; first-logits cosine,
    first-token agreement and exact match within their drop tolerances; the prefill
    speedup (uncut / cut, timed interleaved) on its bootstrap interval (>= 10
    generate.rounds); decode tok/s shown. Another tower, LM depth, decoder precision
    or engine is refused (exit 2), as is a VLM bundle against an encoder one.

    \b
    Examples:
      vtc check out/new --baseline baselines/dinov2-small
      vtc check out/new --baseline base/report.json --junit vtc.xml --json vtc.json
      vtc check out/new --baseline base -t max_speedup_drop=0.10
      vtc check out/llava-new --baseline baselines/llava-visionzip64

    \b
    Exit codes: 0 no regression, 1 a regression, 2 the reports cannot be compared
    (another model, batch, precision or schema version; a missing or corrupt file;
    a tolerance out of range), 3 an internal error.
    """

    def _run() -> int:
        from vtc.stats import speed_advisory

        speed_advisory()  # a bad $VTC_SPEED_GATES: one line, exit 2
        overrides = _overrides(tolerance)
        _target(json_out, "--json", [bundle, baseline])
        _target(junit_out, "--junit", [bundle, baseline])
        if json_out is not None and junit_out is not None and \
                json_out.resolve() == junit_out.resolve():
            raise CheckInputError(f"--json and --junit are the same file {json_out}; give "
                                  "each its own name")
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

    Any two encoder reports compare: another model, method, batch or engine too (a
    line after the table says what differs, which `vtc check` would refuse).

    \b
    Examples:
      vtc report diff baselines/dinov2-small out/dinov2-small
      vtc report diff out/vit-tome-r8 out/dinov2-evit
    """

    def _run() -> int:
        cmp = compare(read_side(a, "A"), read_side(b, "B"), strict=False)
        click.echo(table(cmp, verdicts=False))
        if cmp.incomparable:
            click.echo("not comparable as a check (vtc check refuses such a pair): "
                       + "; ".join(cmp.incomparable))
        if cmp.machine_differences:
            click.echo("machines differ: " + "; ".join(cmp.machine_differences))
        return 0

    guard(_run)


@report.command("show")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--markdown", is_flag=True, help="print the Markdown as it is, unrendered")
def show(bundle: Path, markdown: bool) -> None:
    """Show BUNDLE's report in the terminal (a bundle directory, its report.json or its
    report.md): the verdict, results and gates first, the recipe last.

    The page is rendered from report.json when there is one (so an older bundle gets
    this vtc's layout), else report.md is read as it is.

    \b
    Examples:
      vtc report show out/dinov2-small
      vtc report show out/dinov2-small --markdown > report.md
    """

    def _run() -> int:
        import sys

        from vtc.check.show import terminal

        given = bundle / "report.json" if bundle.is_dir() else bundle
        if bundle.is_dir() and not given.is_file():
            given = bundle / "report.md"
        if given.suffix == ".json" and given.is_file():
            rep = read_side(given, "bundle").report
            if isinstance(rep, Report):
                md = render_markdown(rep)
            else:
                from vtc.validate.report_vlm import render_markdown as render_vlm

                md = render_vlm(rep)
        elif given.suffix == ".md" and given.is_file():
            try:
                md = given.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CheckInputError(f"{given}: cannot be read ({exc}); give a bundle's "
                                      "report.md or report.json") from None
        else:
            raise CheckInputError(f"{bundle}: no report.json or report.md there; give a bundle "
                                  "directory written by vtc-export")
        color = not markdown and sys.stdout.isatty()
        click.echo(md if markdown else terminal(md, color), nl=False)
        return 0

    guard(_run)
