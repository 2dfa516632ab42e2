"""Click's own usage errors (a bad option value, an unknown option or command, a missing
argument) are one line and exit 2, like every other input error; a bare group still prints
its help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from vtc.cli import export_main, main

CASES = [
    (main, ["nosuch"], "No such command 'nosuch'", "vtc --help"),
    (main, ["check"], "Missing argument 'BUNDLE'", "vtc check --help"),
    (main, ["inspect", "--bogus"], "No such option '--bogus'", "vtc inspect --help"),
    (main, ["report", "nosuch"], "No such command 'nosuch'", "vtc report --help"),
    (main, ["generate", "x", "--image", "y", "--prompt", "p", "--max-new-tokens", "0"],
     "--max-new-tokens", "vtc generate --help"),
    (export_main, ["x", "--batch", "-1"], "-1 is not in the range", "vtc-export --help"),
]


@pytest.mark.parametrize(("cmd", "argv", "says", "hint"), CASES,
                         ids=[" ".join(c[1]) for c in CASES])
def test_usage_error_is_one_line(cmd: object, argv: list[str], says: str, hint: str) -> None:
    res = CliRunner().invoke(cmd, argv, prog_name="vtc-export" if cmd is export_main else "vtc")
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and says in lines[0] and f"'{hint}'" in lines[0]


def test_bare_group_prints_its_help() -> None:
    res = CliRunner().invoke(main, [], prog_name="vtc")
    assert "Commands:" in res.output and "error:" not in res.output
