"""Start-up (issue 19): what `vtc` imports before it answers, how long `import vtc.cli`
takes, and signals that arrive while a heavy library is still importing.

Each check runs a fresh interpreter, so nothing the test process imported counts. The
deterministic part carries the weight: after `import vtc.cli`, after `vtc --help`, after
every `vtc CMD --help` and after the light commands (`recipes`, `methods`, `check`,
`report show/diff`, `zoo list`, `data list`, `lint-trt`), the heavy libraries that path
does not need are not in `sys.modules`. That holds on any machine, loaded or not.

The timed bound, `IMPORT_CPU_S`, is on the CPU seconds `import vtc.cli` spends in its own
process (time.process_time), not on wall time: when five sessions share two cores the wall
time of a process stretches, the CPU it uses hardly does (measured at load 5-7 on this
2-core machine: 0.08 s CPU for the lazy CLI; 10.7-12.0 s CPU for the eager one, which
imported torch, transformers and onnx). 1.0 s is over ten times what the import uses, and
below what any one heavy library costs by itself (python -X importtime: torch 3.1 s,
transformers 1.5 s, onnx with ml_dtypes 0.7 1.5 s). The wall-time bound (`IMPORT_WALL_S`,
5 s) only catches a stall.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from bench.startup import tiny_vit_onnx
from tests.reports import sample_report
from vtc import cli as vtc_cli
from vtc.validate.report import write_report

IMPORT_CPU_S = 1.0
IMPORT_WALL_S = 5.0

# Never needed to list commands, read recipes, methods, reports or the zoo and data tables.
HEAVY = ("torch", "transformers", "onnxruntime", "sklearn", "onnx", "onnx_ir", "onnxscript",
         "matplotlib", "skimage", "scipy", "openvino")
# What the ONNX-reading commands may load: onnx (lint-trt), onnx_ir/onnxscript (inspect).
NEVER = ("torch", "transformers", "onnxruntime", "sklearn", "matplotlib", "skimage", "scipy",
         "openvino")

_CHILD = """
import json, sys, time
out, argv = sys.argv[1], sys.argv[2:]
cpu, wall = time.process_time(), time.perf_counter()
import vtc.cli
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
after_import = sorted(m for m in sys.modules if m.split(".")[0] in {heavy})
code = None
if argv:
    try:
        vtc.cli.main(argv, prog_name="vtc")
    except SystemExit as e:
        code = e.code
with open(out, "w") as f:
    json.dump(dict(cpu=cpu, wall=wall, after_import=after_import, code=code,
                   loaded=sorted({{m.split(".")[0] for m in sys.modules}}),
                   vtc=sorted(m for m in sys.modules if m.split(".")[0] == "vtc")), f)
"""

# The modules the listing and reading commands are built on (docs/architecture.md, Start-up):
# none of them may import a heavy library at import time.
LIGHT = ("vtc.errors", "vtc.util", "vtc.stats", "vtc.budget", "vtc.report", "vtc.report_vlm",
         "vtc.backends.base", "vtc.backends.engines", "vtc.backends.options",
         "vtc.backends.machine", "vtc.data", "vtc.methods", "vtc.recipe", "vtc.check",
         "vtc.check.render", "vtc.validate.report", "vtc.validate.gates", "vtc.zoo",
         *(t.partition(":")[0] for t, _ in vtc_cli.COMMANDS.values()))

def _env(*front: Path) -> dict[str, str]:
    root = str(Path(__file__).parents[1])
    path = [str(p) for p in front] + [root] + [os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def _fresh(tmp: Path, *argv: str) -> dict:
    """Run `vtc ARGV` in a fresh interpreter; what it imported, its exit code, its output."""
    out = tmp / f"child-{len(list(tmp.glob('child-*')))}.json"
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(heavy=set(HEAVY)), str(out),
                           *argv], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.is_file(), proc.stderr
    res = json.loads(out.read_text())
    res["stdout"], res["stderr"] = proc.stdout, proc.stderr
    return res


def _heavy(res: dict, names: tuple[str, ...] = HEAVY) -> list[str]:
    return [m for m in names if m in res["loaded"]]


def test_import_vtc_cli_is_light_and_fast(tmp_path: Path) -> None:
    res = _fresh(tmp_path)
    assert res["after_import"] == []
    assert res["cpu"] < IMPORT_CPU_S, f"import vtc.cli took {res['cpu']:.2f} s CPU"
    assert res["wall"] < IMPORT_WALL_S, f"import vtc.cli took {res['wall']:.2f} s"



def test_light_modules_import_nothing_heavy(tmp_path: Path) -> None:
    """Each module of LIGHT, imported in turn in one fresh interpreter: the heavy libraries
    each one pulled in (blamed on the first module that loaded them)."""
    code = ("import importlib, json, sys\n"
            f"heavy, out = {set(HEAVY)!r}, {{}}\n"
            f"for m in {list(LIGHT)!r}:\n"
            "    before = set(sys.modules)\n"
            "    importlib.import_module(m)\n"
            "    out[m] = sorted({n.split('.')[0] for n in set(sys.modules) - before} & heavy)\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    pulled = {m: h for m, h in json.loads(proc.stdout).items() if h}
    assert pulled == {}, f"modules that import heavy libraries at import time: {pulled}"

def test_help_lists_every_command_and_imports_no_command_module(tmp_path: Path) -> None:
    res = _fresh(tmp_path, "--help")
    assert res["code"] == 0, res["stderr"]
    assert _heavy(res) == []
    rows = res["stdout"].split("Commands:\n")[1].splitlines()
    listed = {row.split()[0]: " ".join(row.split()[1:]) for row in rows if row.strip()}
    assert listed == {name: short for name, (_, short) in vtc_cli.COMMANDS.items()}
    assert res["vtc"] == ["vtc", "vtc.cli", "vtc.cli.lazy", "vtc.errors"]


def test_every_command_of_the_package_is_in_the_table() -> None:
    """COMMANDS names each top-level click command of vtc/cli/ once, under its own name;
    a command module added without a line in the table fails here."""
    import importlib
    import pkgutil

    targets = {}
    for name, (target, short) in vtc_cli.COMMANDS.items():
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command) and cmd.name == name and short, target
        targets[id(cmd)] = name
    found, subcommands = {}, set()
    for info in pkgutil.iter_modules(vtc_cli.__path__):
        mod = importlib.import_module(f"vtc.cli.{info.name}")
        for attr, obj in vars(mod).items():
            if isinstance(obj, click.Command):
                found[id(obj)] = f"{mod.__name__}:{attr}"
            if isinstance(obj, click.Group):
                subcommands |= {id(c) for c in obj.commands.values()}
    # the group itself, and vtc-export: an entry point of its own
    entry = {id(vtc_cli.main), id(vtc_cli.export_main)}
    missing = {v for k, v in found.items() if k not in targets.keys() | subcommands | entry}
    assert missing == set(), f"click commands no COMMANDS line names: {missing}"
    assert vtc_cli.main.list_commands(click.Context(vtc_cli.main)) == sorted(vtc_cli.COMMANDS)


@pytest.mark.parametrize("argv", [[name, "--help"] for name in sorted(vtc_cli.COMMANDS)]
                         + [["report", "show", "--help"], ["zoo", "fetch", "--help"]])
def test_command_help_imports_nothing_heavy(argv: list[str], tmp_path: Path) -> None:
    res = _fresh(tmp_path, *argv)
    assert res["code"] == 0, res["stderr"]
    assert "Usage: vtc " in res["stdout"]
    assert _heavy(res) == []


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vtc.validate.gates import evaluate_gates

    d = tmp_path_factory.mktemp("reports")
    report = sample_report()
    report.gates = evaluate_gates(report, {"max_parity_diff": 1e-4})
    report.passed = all(g.passed for g in report.gates)
    write_report(d / "a", report)
    write_report(d / "b", report)
    return d / "a", d / "b"


def test_light_commands_import_nothing_heavy(tmp_path: Path,
                                             bundles: tuple[Path, Path]) -> None:
    a, b = (str(p) for p in bundles)
    for argv in (["recipes"], ["methods"], ["zoo", "list"], ["data", "list"],
                 ["check", b, "--baseline", a], ["report", "show", a],
                 ["report", "show", f"{a}/report.json"], ["report", "diff", a, b]):
        res = _fresh(tmp_path, *argv)
        assert res["code"] == 0, (argv, res["stderr"])
        assert res["stdout"].strip(), argv
        assert _heavy(res) == [], argv


def test_onnx_commands_load_no_torch(tmp_path: Path) -> None:
    model = str(tiny_vit_onnx(tmp_path / "vit.onnx"))
    lint = _fresh(tmp_path, "lint-trt", model)
    assert lint["code"] == 0 and "0 error(s)" in lint["stdout"], lint["stderr"]
    assert _heavy(lint, ("onnx_ir", "onnxscript", *NEVER)) == []
    inspect = _fresh(tmp_path, "inspect", model)
    assert inspect["code"] == 0 and "3 transformer blocks" in inspect["stdout"]
    assert _heavy(inspect, NEVER) == []


# ---- signals during start-up -------------------------------------------------------------

_SLOW = """import sys, time
sys.stderr.write("importing {name}\\n")
sys.stderr.flush()
time.sleep(120)
"""


def _stub(tmp: Path, name: str) -> Path:
    """A package `name` whose import announces itself and then takes two minutes."""
    d = tmp / "stubs"
    (d / name).mkdir(parents=True)
    (d / name / "__init__.py").write_text(_SLOW.format(name=name))
    return d


def _signal_when(proc: subprocess.Popen[str], line: str, sig: int) -> tuple[int, str]:
    assert proc.stderr is not None
    seen = []
    for got in proc.stderr:
        seen.append(got)
        if got.startswith(line):
            break
    else:
        pytest.fail(f"never saw {line!r}: {''.join(seen)}")
    proc.send_signal(sig)
    rest = proc.stderr.read()
    return proc.wait(timeout=60), rest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_torch_imports_in_vtc_export_is_130(sig: int, tmp_path: Path) -> None:
    """vtc-export imports torch inside the command (a stub torch that hangs stands in for
    the slow real import): the signal there exits 130 with the interrupted line."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vtc.cli import export_main; export_main()",
         str(tmp_path / "model"), "--out", str(tmp_path / "out")],
        stderr=subprocess.PIPE, text=True, env=_env(_stub(tmp_path, "torch")))
    code, rest = _signal_when(proc, "importing torch", sig)
    assert code == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert not (tmp_path / "out").exists()


def test_signal_while_the_command_module_imports_is_130(tmp_path: Path) -> None:
    """`vtc check` imports its module (and yaml, through the recipe) after the group has
    parsed: a signal there, outside any command body, exits 130 too, not click's
    "Aborted!" (exit 1) or the default SIGTERM death (exit 143)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vtc.cli import main; main()", "check",
         str(tmp_path / "a"), "--baseline", str(tmp_path / "b")],
        stderr=subprocess.PIPE, text=True, env=_env(_stub(tmp_path, "yaml")))
    code, rest = _signal_when(proc, "importing yaml", signal.SIGTERM)
    assert code == 130, rest
    assert "interrupted" in rest and "Aborted" not in rest and "Traceback" not in rest


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
def test_sigterm_during_the_real_torch_import_is_130(tmp_path: Path) -> None:
    """The real import: SIGTERM as soon as libtorch is mapped into vtc-export (torch's
    Python-level import still has a second or more to go)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vtc.cli import export_main; export_main()",
         str(tmp_path / "model"), "--out", str(tmp_path / "out")],
        stderr=subprocess.PIPE, text=True, env=_env())
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "vtc-export ended before torch was imported"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


def test_interrupts_exit_turns_an_interrupt_into_130(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from vtc import errors

    with pytest.raises(SystemExit) as info, errors.interrupts_exit():
        raise KeyboardInterrupt
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing was written"
    with pytest.raises(ImportError), errors.interrupts_exit():  # no signal: passes through
        raise ImportError("initialization failed")
    monkeypatch.setattr(errors, "_signalled", True)
    with pytest.raises(SystemExit) as info, errors.interrupts_exit():
        raise ImportError("initialization failed")  # what a cut-short C extension raises
    assert info.value.code == 130
