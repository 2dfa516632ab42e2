"""Bad input, table-driven: every case exits 2 with one `error:` line naming the problem,
no traceback, nothing left beside --out, and the source unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from tests.conftest import FAST
from vtc.cli import export_main

Case = Callable[[Path, Path], tuple[list[str], str]]  # (tmp, vit_onnx) → (argv, expected)


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _text_onnx(tmp: Path, _src: Path) -> tuple[list[str], str]:
    (tmp / "m.onnx").write_text("this is not a model\n")
    return [str(tmp / "m.onnx")], "not an ONNX model|not a readable ONNX file"


def _empty_onnx(tmp: Path, _src: Path) -> tuple[list[str], str]:
    (tmp / "m.onnx").write_bytes(b"")
    return [str(tmp / "m.onnx")], "not an ONNX model"


def _truncated_onnx(tmp: Path, src: Path) -> tuple[list[str], str]:
    data = src.read_bytes()
    (tmp / "m.onnx").write_bytes(data[: len(data) // 3])
    return [str(tmp / "m.onnx")], "not a readable ONNX file|not an ONNX model"


def _missing_external_data(tmp: Path, src: Path) -> tuple[list[str], str]:
    model = onnx.load(str(src))
    onnx.save(model, str(tmp / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    (tmp / "m.onnx.data").unlink()
    return [str(tmp / "m.onnx")], r"external data file\(s\) m\.onnx\.data, not found"


def _compressed_again(tmp: Path, src: Path) -> tuple[list[str], str]:
    import onnx_ir as ir

    from tests.budgets import tome_budget
    from vtc.budget import Geometry
    from vtc.passes import load
    from vtc.stages.compress import rewrite

    m = load(src)
    rewrite(m, tome_budget(Geometry(17, 1, 64, 128, 3), r=2))
    ir.save(m, tmp / "m.onnx")
    return [str(tmp / "m.onnx")], "already compressed by vtc"


def _recipe(*sets: str, expected: str) -> Case:
    def case(_tmp: Path, src: Path) -> tuple[list[str], str]:
        return [str(src), *[a for s in sets for a in ("--set", s)]], expected
    return case


CASES: dict[str, Case] = {
    "text file as .onnx": _text_onnx,
    "empty .onnx": _empty_onnx,
    "truncated .onnx": _truncated_onnx,
    "external data missing": _missing_external_data,
    "vtc's own model.onnx as SOURCE": _compressed_again,
    "chain over overlapping blocks": _recipe(
        "method=[tome,evit]", "tome.r=2", "evit.layers=[1]",
        expected=r"tome and evit both act in blocks \[1\]"),
    "pitome margin above range": _recipe(
        "method=pitome", "pitome.r=2", "pitome.margin=1.5", expected=r"outside \[-1, 1\)"),
    "pitome margin below range": _recipe(
        "method=pitome", "pitome.r=2", "pitome.margin=-2", expected=r"outside \[-1, 1\)"),
    "pitome margin NaN": _recipe(
        "method=pitome", "pitome.r=2", "pitome.margin=.nan", expected=r"outside \[-1, 1\)"),
    "pitome alpha infinite": _recipe(
        "method=pitome", "pitome.alpha=.inf", expected="finite"),
    "unknown method": _recipe("method=prune", expected="unknown reduction method 'prune'"),
    "a method named twice": _recipe("method=[tome,tome]", expected="names a method twice"),
    "layers outside the model": _recipe("tome.layers=[7]", expected=r"tome.layers \[7\]"),
    "r list of the wrong length": _recipe("tome.r=[1,1]", expected="one value per block"),
    "r and flops_ratio both": _recipe("tome.flops_ratio=1.5",
                                      expected="give r or flops_ratio, not both"),
    "unknown engine": _recipe("backend.kind=tflite", expected="unknown engine 'tflite'"),
    "unknown tome split": _recipe("tome.protected=middle", expected="tome.protected"),
    "malformed --set YAML": _recipe("tome.r=[1,", expected=r"--set tome\.r=\[1,.*not valid YAML"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name: str, tmp_path: Path, vit_onnx: Path) -> None:
    src_copy = tmp_path / "src.onnx"
    src_copy.write_bytes(vit_onnx.read_bytes())
    argv, expected = CASES[name](tmp_path, src_copy)
    sources = [Path(a) for a in argv[:1] if Path(a).exists()]
    before = {p: _tree_digest(p) for p in sources}
    out = tmp_path / "out"
    res = CliRunner().invoke(export_main, [argv[0], "--recipe", "tome-r8", "--out", str(out),
                                           *FAST, "--set", "tome.r=2", *argv[1:]])
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith(("error:", "internal"))]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    import re

    assert re.search(expected, errors[0]), errors[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing beside --out
    assert {p: _tree_digest(p) for p in sources} == before  # the source is unchanged
