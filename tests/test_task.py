"""validate.task: a task metric of the user's own, on a tiny seeded encoder–decoder
(examples/seq2seq_task.py) and on small recording functions (tests/task_fns.py)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from tests import task_fns
from tests.conftest import FAST
from vtc.cli import export_main
from vtc.validate.usertask import TaskError, load_task, run_task

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module("seq2seq_task")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def encoder(example: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example.export_encoder(tmp_path_factory.mktemp("s2s") / "encoder.onnx")  # type: ignore[no-any-return]


def test_example_metrics(example: ModuleType) -> None:
    assert example.edit_distance([1, 2, 3], [1, 3]) == 1
    assert example.edit_distance([], [4, 4]) == 2
    mem = np.random.default_rng(0).standard_normal((6, 17, 64)).astype(np.float32)
    seqs = example.greedy(mem)
    assert len({tuple(s) for s in seqs}) > 1  # the decoder listens to the memory
    same = example.score(None, {"last_hidden_state": mem}, {"last_hidden_state": mem})
    assert same == {"exact_match": 1.0, "edit_distance": 0.0}
    other = example.score(None, {"last_hidden_state": mem},
                          {"last_hidden_state": mem[::-1].copy()})
    assert other["exact_match"] < 1.0 and other["edit_distance"] > 0.0


def test_encoder_decoder_task_end_to_end(example: ModuleType, encoder: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    out = tmp_path / "b"
    res = CliRunner().invoke(export_main, [
        str(encoder), "--recipe", str(EXAMPLES / "seq2seq.yaml"), "--out", str(out),
        "--batch", "2", "--no-bench", "--set", "gates={min_task.exact_match: 1.01, "
        "max_task.edit_distance: 1.0}"])
    assert res.exit_code == 1, res.output  # exact_match can never reach 1.01
    rep = json.loads((out / "report.json").read_text())
    task = rep["task"]
    assert task["function"] == "seq2seq_task:score" and task["n"] == 16
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["min_task.exact_match"]["value"] == task["metrics"]["exact_match"]
    assert not gates["min_task.exact_match"]["passed"]
    assert gates["max_task.edit_distance"]["passed"]  # normalised: at most 1
    assert "FAIL min_task.exact_match" in res.output
    assert "| exact_match |" in (out / "report.md").read_text()
    # the decoder scored the full-length (unmerged) token sequences of both engines
    assert rep["graph"]["unmerge"]["tokens"] == 17
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    mem = {}
    for name in ("baseline", "model"):
        sess = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        mem[name] = {"last_hidden_state": np.concatenate(
            [sess.run(None, {"pixel_values": x[i:i + 2]})[0] for i in range(0, 16, 2)])}
    assert mem["model"]["last_hidden_state"].shape == (16, 17, 64)
    want = example.score(x, mem["baseline"], mem["model"])
    assert task["metrics"] == pytest.approx(want)


def test_task_gets_inputs_and_every_output(vit_onnx: Path, tmp_path: Path) -> None:
    task_fns.SEEN.clear()
    res = CliRunner().invoke(export_main, [
        str(vit_onnx), "--out", str(tmp_path / "b"), *FAST, "--no-bench", "--set",
        "tome.r=2", "--set", "validate.task=tests.task_fns:record", "--set",
        "gates={max_task.mean_abs_diff: 1000}"])
    assert res.exit_code == 0, res.output
    (seen,) = task_fns.SEEN
    assert seen["inputs"].shape == (4, 3, 32, 32)  # validate.samples=4, batch 2: no padding
    assert set(seen["baseline"]) == set(seen["compressed"]) == {"logits"}
    assert seen["baseline"]["logits"].shape == seen["compressed"]["logits"].shape == (4, 10)
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["task"]["metrics"]["count"] == 4.0
    assert rep["task"]["metrics"]["mean_abs_diff"] > 0  # the engines differ


@pytest.mark.parametrize(("spec", "match"), [
    ("no_such_module_xyz:f", r"no module no_such_module_xyz in PYTHONPATH .*, the current "
                             r"directory \(.*\) or the installed packages"),
    ("tests.no_such_xyz:f", r"no module tests\.no_such_xyz in PYTHONPATH"),
    ("task_fns.py:f", r"task_fns\.py is a file name; give the module, 'task_fns:f'"),
    ("tests.task_fns:missing", "has no attribute 'missing'"),
    ("tests.task_fns:NOT_A_FUNCTION", "a non-callable int"),
    ("tests/task_fns.py", "not an import path"),
])
def test_load_task_refuses(spec: str, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        load_task(spec)


@pytest.mark.parametrize(("fn", "match"), [
    ("boom", "raised RuntimeError: the decoder checkpoint is missing"),
    ("words", r"exact_match='high' \(str\); every metric must be a finite number"),
    ("nan", "exact_match=nan"),
    ("listed", "returned list"),
])
def test_run_task_refuses(fn: str, match: str) -> None:
    spec = f"tests.task_fns:{fn}"
    out = {"y": np.zeros((1, 2), np.float32)}
    with pytest.raises(TaskError, match=match):
        run_task(load_task(spec), spec, np.zeros((1, 3, 4, 4), np.float32), out, out)


def _task_module(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(body)


SCORE = "def score(inputs, baseline, compressed):\n    return {'n': float(len(inputs))}\n"


def test_load_task_reads_pythonpath_at_call_time(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONPATH set (relative) after start-up, or ignored by the interpreter (python -E,
    some launchers): sys.path lacks it, and the task module is still found there."""
    _task_module(tmp_path / "tasks", "late_task_mod", SCORE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "tasks")
    path_before = list(sys.path)
    fn = load_task("late_task_mod:score")
    assert fn(np.zeros((3, 1)), {}, {}) == {"n": 3.0}
    assert sys.path == path_before  # the search entries are removed again
    sys.modules.pop("late_task_mod", None)


def test_load_task_tells_a_missing_module_from_a_failing_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module found on PYTHONPATH that fails to import is not 'cannot import: set
    PYTHONPATH': the message names its own error and where it happened."""
    _task_module(tmp_path / "t", "needs_dep_mod", "import no_such_dependency_xyz\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "t"))
    with pytest.raises(TaskError, match=r"needs_dep_mod was found but importing it raised "
                       r"ModuleNotFoundError: No module named 'no_such_dependency_xyz' at "
                       r".*needs_dep_mod\.py:1"):
        load_task("needs_dep_mod:score")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "nowhere"))
    with pytest.raises(TaskError, match=r"PYTHONPATH entry .*nowhere is not a directory"):
        load_task("some_other_mod_xyz:score")


def test_vtc_export_imports_the_task_from_pythonpath(vit_onnx: Path, tmp_path: Path) -> None:
    """The issue's case, in a real process: `PYTHONPATH=dir vtc-export … --set
    validate.task=mod:fn` with a relative PYTHONPATH entry, run from another directory than
    the source. The function name is wrong on purpose: the refusal ('mod has no attribute')
    comes from the imported module, before any work, and nothing is written."""
    import os
    import subprocess

    _task_module(tmp_path / "work" / "mytasks", "subproc_task_mod", SCORE)
    root = Path(__file__).parents[1]
    script = ("import sys; from vtc.cli import export_main; sys.argv[0] = 'vtc-export'; "
              "export_main()")
    res = subprocess.run(
        [sys.executable, "-c", script, str(vit_onnx), "--out", str(tmp_path / "out"),
         "--set", "validate.task=subproc_task_mod:scroe"],
        cwd=tmp_path / "work", capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(["mytasks", str(root)])})
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "subproc_task_mod has no attribute 'scroe'" in lines[0]
    assert not (tmp_path / "out").exists()
