"""Shared fixtures: tiny models built from configs with a fixed seed, and
their ONNX exports, made once per session (exports are the slow part).

The suite runs on two pytest-xdist workers, a test file per worker at a time
(`--dist loadfile`, so module fixtures are built once)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.tiny import LazyModels

# Bytecode for the workers and the subprocesses this suite starts, even where the
# environment sets PYTHONDONTWRITEBYTECODE (Makefile `test`): without it every process
# compiles torch, transformers and vtc from source again (a fresh clone whose install
# skipped compiling ran the suite 120 s slower, 2026-12-07).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

TINY_VIT = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=128, image_size=32, patch_size=8, num_labels=10)


def tiny_vit(seed: int = 0) -> torch.nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(**TINY_VIT)).eval()
    # Random init leaves biases at zero; give them values so that exporters
    # cannot fold them away and parity tests see real arithmetic.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


class _Wrap(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.m(pixel_values).logits


def export(model: torch.nn.Module, path: Path, batch: int = 2, dynamo: bool = True,
           dynamic_axes: bool = False) -> Path:
    """dynamo=False, dynamic_axes=True writes what optimum-cli writes: the TorchScript
    exporter with `[batch_size, num_channels, height, width]` symbolic input dims."""
    x = torch.randn(batch, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(_Wrap(model), (x,), dynamo=True, opset_version=18,
                                     input_names=["pixel_values"], output_names=["logits"],
                                     verbose=False)
            assert prog is not None
            prog.save(str(path))
        else:
            axes = {"pixel_values": {0: "batch_size", 1: "num_channels", 2: "height",
                                     3: "width"}, "logits": {0: "batch_size"}}
            torch.onnx.export(_Wrap(model), (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_axes=axes if dynamic_axes else None)
    return path


def pytest_configure(config: pytest.Config) -> None:
    """One compute thread per xdist worker. The suite runs two workers on two cores; left
    to their defaults, torch and every onnxruntime session in each worker start a thread
    per core, and onnxruntime's spinning threads then wait on each other: measured on the
    passes, engine-parity and torch-attention files, 98-100 s with the defaults against
    88-89 s with one thread each (2026-12-07). A session that sets its own thread count
    keeps it; subprocesses inherit OMP_NUM_THREADS (torch's count)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import onnxruntime as ort

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    init = ort.InferenceSession.__init__

    def one_thread(self: Any, model: Any, sess_options: Any = None, *a: Any, **k: Any) -> None:
        opts = sess_options if sess_options is not None else ort.SessionOptions()
        if opts.intra_op_num_threads == 0:
            opts.intra_op_num_threads = 1
        init(self, model, opts, *a, **k)

    ort.InferenceSession.__init__ = one_thread  # type: ignore[method-assign]


# CLI flags that keep a pipeline run on a tiny model to a few seconds.
FAST = ["--set", "validate.repeats=2", "--set", "validate.warmup=1", "--set",
        "validate.samples=4", "--batch", "2"]


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViTForImageClassification checkpoint directory (safetensors)."""
    from tests.tiny import build_variant

    _, model = build_variant("vit-cls")
    path = tmp_path_factory.mktemp("ckpt") / "vit"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vit_model() -> torch.nn.Module:
    return tiny_vit()


@pytest.fixture(scope="session")
def vit_onnx(tmp_path_factory: pytest.TempPathFactory, vit_model: torch.nn.Module) -> Path:
    return export(vit_model, tmp_path_factory.mktemp("vit") / "vit_dynamo.onnx")


@pytest.fixture(scope="session")
def vit_onnx_ts(tmp_path_factory: pytest.TempPathFactory, vit_model: torch.nn.Module) -> Path:
    return export(vit_model, tmp_path_factory.mktemp("vit") / "vit_ts.onnx", dynamo=False)


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LazyModels:
    """Every tiny family variant, built and exported at most once per session."""
    return LazyModels(tmp_path_factory.mktemp("onnx"))


# ---- every report.json written in the test suite validates against the shipped schema ----

SCHEMA = json.loads((Path(__file__).parents[1] / "vtc" / "report.schema.json").read_text())
VLM_SCHEMA = json.loads((Path(__file__).parents[1] / "vtc" / "vlm.schema.json").read_text())


def schema_of(report: dict) -> dict:
    """A vision-language bundle's report (kind: vlm) has its own schema."""
    return VLM_SCHEMA if report.get("kind") == "vlm" else SCHEMA


# One validator per schema, the schema checked once: `jsonschema.validate` checks the
# schema against its metaschema on every call (about 0.1 s per report here).
_VALIDATORS = {id(s): jsonschema.validators.validator_for(s)(s) for s in (SCHEMA, VLM_SCHEMA)}
for _v in _VALIDATORS.values():
    _v.check_schema(_v.schema)


def validate_report(report: dict) -> None:
    """Raise jsonschema.ValidationError when `report` does not match its schema."""
    _VALIDATORS[id(schema_of(report))].validate(report)
CHECKED: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def reports_match_the_schema() -> Iterator[None]:
    """Wrap the report writer for the whole session: a report.json that does not validate
    fails the test that wrote it (`pytest_sessionfinish` also scans what other processes
    wrote under the session's temp dir)."""
    from vtc.stages import bundle
    from vtc.validate import report as writer

    real = writer.write_report

    def checked(out_dir: Path, report: object) -> tuple[Path, Path]:
        paths = real(out_dir, report)  # type: ignore[arg-type]
        _VALIDATORS[id(SCHEMA)].validate(json.loads(paths[0].read_text()))
        CHECKED.append(paths[0])
        return paths

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "write_report", checked)
        mp.setattr(bundle, "write_report", checked)
        mp.setattr(CliRunner, "invoke", _source_untouched(CliRunner.invoke))
        yield


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


SOURCES_CHECKED: list[Path] = []


def _source_untouched(invoke: Any) -> Any:
    """CliRunner.invoke that hashes every existing path given as an argument before and
    after the command and fails when a source changed: vtc never writes its inputs (for
    `vtc-export`/`vtc sweep`: SOURCE, --images, --recipe files)."""

    def wrapped(self: CliRunner, cli: Any, args: Any = None, *a: Any, **k: Any) -> Any:
        argv = [str(x) for x in (args or [])]
        outs = {argv[i + 1] for i, x in enumerate(argv[:-1]) if x in ("--out", "-o")}
        paths = [Path(x) for x in argv if x and x not in outs and not x.startswith("-")
                 and "=" not in x and len(x) < 255 and Path(x).exists()
                 and Path(x).resolve() != Path("/")]
        paths = [p for p in paths if not any(Path(o).resolve() == p.resolve() for o in outs)]
        before = {p: _tree_digest(p) for p in paths}
        result = invoke(self, cli, args, *a, **k)
        after = {p: _tree_digest(p) for p in paths}
        changed = [str(p) for p in paths if before[p] != after[p]]
        assert not changed, f"the command changed its input(s) {changed}: {argv}"
        SOURCES_CHECKED.extend(paths)
        return result

    return wrapped


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Validate every report.json left under the session's temp dir (bundles written by
    subprocesses included); a bad one fails the session with its path."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # (under xdist the controller scans the workers' temp dirs, all of them)
    bad = []
    found = list(factory.getbasetemp().rglob("report.json"))
    for path in found:
        try:
            data = json.loads(path.read_text())
            validate_report(data)
        except (jsonschema.ValidationError, ValueError) as exc:
            bad.append(f"{path}: {str(exc).splitlines()[0]}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and found:  # (in-process checks fail the test that wrote it)
        reporter.write_line(f"report schema: {len(found)} report.json files validated, "
                            f"{len(bad)} invalid")
    if bad:
        for line in bad:
            print(f"INVALID REPORT {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# The longest test files, longest first (`python -m pytest --durations=0`, 2026-12-07, one
# thread per worker: the README examples 95 s, the real dinov2 pipeline 98 s, then 20-50 s
# each). They are handed out first, so that under `--dist loadfile` the two workers share
# the short files at the end instead of one worker running a long file alone while the
# other idles. pyproject's addopts pass `--no-loadscope-reorder`: by default xdist hands
# files out by their number of tests, most first, which put these two-test files last.
LONGEST_FIRST = (
    "tests/test_readme.py", "tests/zoo/test_real_pipeline.py", "tests/test_torch_attention.py",
    "tests/test_engine_parity.py", "tests/test_cli.py", "tests/check/test_ci_script.py",
    "tests/vlm/test_vlm_pipelines.py", "tests/vlm/test_decoder.py",
    "tests/passes/test_fuse_attention.py", "tests/test_bad_input.py", "tests/vlm/test_bundle.py",
    "tests/exporter/test_families.py", "tests/passes/test_dynamic_batch.py",
    "tests/vlm/test_qwen.py", "tests/test_sweep.py", "tests/passes/test_merge_sites.py",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Longest files first (LONGEST_FIRST); the rest keep their order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
