"""``vtc data``: list the datasets and install Fashion-MNIST."""

from __future__ import annotations

from typing import Any

import click

from vtc.data import canonical, describe
from vtc.data import fashion_mnist as fm
from vtc.errors import guard

DATA_HELP = """Datasets for accuracy (linear probe) and dense-output checks.

\b
Examples:
  vtc data list                     what is available, and where
  vtc data install fashion-mnist    apt-get install -y dataset-fashion-mnist (as root)

\b
fashion-mnist is looked for in $VTC_FASHION_MNIST, then
/usr/share/datasets/fashion-mnist. lfw-subset and the photos ship with
scikit-image. Exit 2 with one line `error: ...` when a dataset is missing and
cannot be installed.
"""


def _cell(v: Any) -> str:
    return "-" if v is None or v == 0 else str(v)


@click.group("data", help=DATA_HELP, context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    pass


@data.command("list", short_help="List datasets, sizes and where they are.")
def list_cmd() -> None:
    """List the datasets: classes, train/test sizes, image size, where they are.

    \b
    Example:
      vtc data list
    """

    def _run() -> int:
        rows = describe()
        click.echo(f"{'name':<14} {'classes':>7} {'train':>6} {'test':>6}  {'image':<16} where")
        for r in rows:
            click.echo(f"{r['name']:<14} {_cell(r['n_classes']):>7} {_cell(r['n_train']):>6} "
                       f"{_cell(r['n_test']):>6}  {r['image']:<16} {r['where']}")
        return 0

    guard(_run)


@data.command("install", short_help="Install a dataset (fashion-mnist: apt).")
@click.argument("name")
def install_cmd(name: str) -> None:
    """Install dataset NAME (fashion-mnist: the Debian package, needs root).

    \b
    Examples:
      vtc data install fashion-mnist
      sudo vtc data install fashion-mnist
    """

    def _run() -> int:
        key = canonical(name)
        if key != "fashion-mnist":
            click.echo(f"{key}: nothing to install (ships with scikit-image)")
            return 0

        found = fm.find()
        if found is None:
            folder = fm.install(progress=lambda line: click.echo(line, err=True))
            verb = "installed"
        else:
            folder, verb = found, "already installed"
        # Read both splits once so that a corrupt install fails here, not mid-validation.
        n_train, n_test = (len(fm.read_split(split, folder)[1]) for split in ("train", "test"))
        click.echo(f"fashion-mnist: {verb} in {folder} ({n_train} train / {n_test} test, "
                   f"{len(fm.CLASSES)} classes)")
        return 0

    guard(_run)
