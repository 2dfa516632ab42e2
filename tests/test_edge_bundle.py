"""The bundle's edge files (`vtc.stages.edge`): samples/ and trt/, trt/check.py through
its onnxruntime path and its one-line refusals, the TensorRT path (skipped without
TensorRT), and `vtc.runtime` with torch and transformers unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import FAST
from vtc.backends.tensorrt import tensorrt_available
from vtc.cli import export_main
from vtc.data.images import fit as vtc_fit
from vtc.data.images import normalize
from vtc.report import Preprocess, ZeroInput
from vtc.runtime import Bundle
from vtc.stages import edge
from vtc.util import sha256_file

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bundle(vit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tome bundle at static batch 2 (6 synthetic samples: 5 rounded up to the batch)."""
    out = tmp_path_factory.mktemp("edge") / "out"
    args = [str(vit_dir), "--recipe", "tome-r8", "--out", str(out), *FAST,
            "--set", "tome.r=3", "--set", "validate.samples=5",
            "--set", "export.dynamic_batch=false"]  # static: any batch is the default
    res = CliRunner().invoke(export_main, args)
    assert res.exit_code == 0, res.output
    return out


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_samples_and_trt_files(bundle: Path) -> None:
    rep = json.loads((bundle / "report.json").read_text())
    meta = json.loads((bundle / "samples" / "samples.json").read_text())
    with np.load(bundle / "samples" / "inputs.npz") as f:
        x = f["pixel_values"]
    with np.load(bundle / "samples" / "reference.npz") as f:
        refs = {k: f[k] for k in f.files}
    assert x.dtype == np.float32 and x.shape == (meta["count"], 3, 32, 32)
    assert 1 <= meta["count"] <= edge.SAMPLES_MAX and meta["batch"] == 2
    assert set(refs) == {"engine", "eager_reference"} and meta["parity_reference"] == \
        "eager_reference"
    assert refs["engine"].shape == (len(x), 10)
    # the bundled references are the report's parity tier, on a subset of its samples
    diff = float(np.abs(refs["engine"] - refs["eager_reference"]).max())
    assert diff <= rep["parity"]["engine"]["max_abs_diff"] + 1e-12
    assert meta["max_parity_diff"] == rep["recipe"]["gates"]["max_parity_diff"]
    sh = (bundle / "trt" / "build.sh").read_text()
    assert os.access(bundle / "trt" / "build.sh", os.X_OK)
    for flag in ("--onnx=../model.onnx", "--saveEngine=model.plan", "--fp16",
                 "--timingCacheFile=timing.cache", "pixel_values 2x3x32x32"):
        assert flag in sh, flag
    man = json.loads((bundle / "manifest.json").read_text())
    assert set(man["edge"]) == {"samples/inputs.npz", "samples/reference.npz",
                                "samples/samples.json", "trt/build.sh", "trt/check.py"}
    assert all(sha256_file(bundle / k) == v for k, v in man["edge"].items())
    assert (bundle / "trt" / "check.py").read_text() == \
        (ROOT / "vtc" / "runtime" / "trt_check.py").read_text()


def test_build_sh_profile_for_a_dynamic_batch() -> None:
    pre = Preprocess("pixel_values", 3, 224, 224, "crop", [0.5] * 3, [0.5] * 3,
                     {"mask": ZeroInput([8, 196], "int64")})
    sh = edge.build_sh(pre, ["batch", 3, 224, 224], 8)
    assert "--minShapes=pixel_values:1x3x224x224,mask:1x196" in sh
    assert "--optShapes=pixel_values:8x3x224x224,mask:8x196" in sh
    assert "--maxShapes=pixel_values:8x3x224x224,mask:8x196" in sh
    static = edge.build_sh(pre, [8, 3, 224, 224], 8)
    assert "Shapes=" not in static and "pixel_values 8x3x224x224" in static


def test_sample_count_is_capped_by_bytes() -> None:
    x = np.zeros((8, 3, 224, 224), np.float32)  # 602 kB per image
    dense = {"engine": np.zeros((8, 384, 37, 37), np.float32)}  # 2.1 MB per image
    assert edge._count(x[:3], {}) == 3
    assert edge._count(x, {}) == edge.SAMPLES_BYTES // x[0].nbytes
    assert edge._count(x, dense) == edge.SAMPLES_BYTES // (x[0].nbytes + dense["engine"][0].nbytes)
    huge = np.zeros((4, 3, 2048, 2048), np.float32)
    assert edge._count(huge, {}) == 1


def test_npz_bytes_are_deterministic(tmp_path: Path) -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(3)}
    edge._write_npz(tmp_path / "1.npz", arrays)
    edge._write_npz(tmp_path / "2.npz", arrays)
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
    with np.load(tmp_path / "1.npz") as f:
        assert sorted(f.files) == ["a", "b"] and np.array_equal(f["b"], arrays["b"])


def test_check_py_onnxruntime_path(bundle: Path) -> None:
    res = _run([str(bundle / "trt" / "check.py"), "--runtime", "ort-cpu", "--seconds", "0.2",
                "--json"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    with np.load(bundle / "samples" / "reference.npz") as f:
        rc, c = f["eager_reference"], f["engine"]
    assert out["parity"]["against"] == "eager_reference" and out["parity"]["passed"] is True
    assert out["parity"]["max_abs_diff"] <= out["parity"]["gate"]
    assert out["tiers"]["engine"]["max_abs_diff"] < 1e-4  # model.onnx vs the ORT engine
    assert out["samples"] == len(rc) == len(c) and out["batch"] == 2
    assert out["throughput"]["img_per_s"] > 0 and out["throughput"]["calls"] >= 5
    text = _run([str(bundle / "trt" / "check.py"), "--runtime", "ort-cpu", "--seconds", "0.1"])
    assert text.returncode == 0 and "PASS (gate 0.0001)" in text.stdout
    failing = _run([str(bundle / "trt" / "check.py"), "--runtime", "ort-cpu", "--seconds", "0.1",
                    "--gate", "0"])
    assert failing.returncode in (0, 1) and ("FAIL" in failing.stdout) == (failing.returncode == 1)


def test_check_py_without_a_runtime_says_what_to_install(bundle: Path, tmp_path: Path) -> None:
    """tensorrt and onnxruntime made unimportable: one line naming both, exit 2."""
    for mod in ("tensorrt", "onnxruntime"):
        (tmp_path / f"{mod}.py").write_text(f"raise ImportError('no {mod} here')\n")
    res = _run([str(bundle / "trt" / "check.py")], env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "pip install tensorrt" in res.stderr and "onnxruntime-gpu" in res.stderr
    gpu = _run([str(bundle / "trt" / "check.py"), "--runtime", "ort-gpu"],
               env={"PYTHONPATH": str(tmp_path)})
    assert gpu.returncode == 2 and "pip install onnxruntime-gpu" in gpu.stderr


def test_check_py_outside_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "trt").mkdir()
    script = tmp_path / "trt" / "check.py"
    script.write_text((ROOT / "vtc" / "runtime" / "trt_check.py").read_text())
    res = _run([str(script), "--runtime", "ort-cpu"])
    # the first file it reads is manifest.json (for the sha256 of samples/ and model.onnx)
    assert res.returncode == 2 and "manifest.json" in res.stderr and "Traceback" not in res.stderr


def test_check_py_tensorrt_path(bundle: Path, tmp_path: Path) -> None:
    if not tensorrt_available():
        pytest.skip("TensorRT is not installed (pip install tensorrt needs an NVIDIA GPU); "
                    "the onnxruntime path is tested above")
    res = _run([str(bundle / "trt" / "check.py"), "--runtime", "tensorrt", "--fp32",
                "--rebuild", "--seconds", "0.5", "--json"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["runtime"].startswith("TensorRT") and out["parity"]["passed"] is True
    assert (bundle / "trt" / "model.plan").is_file()


# ---- vtc.runtime -----------------------------------------------------------------------

def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for name, shape, mode in [("wide.png", (40, 70, 3), "RGB"), ("tall.jpg", (61, 29, 3), "RGB"),
                              ("gray.png", (50, 50), "L"), ("small.png", (9, 13, 3), "RGB")]:
        p = folder / name
        Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(p)
        paths.append(p)
    p16 = folder / "deep16.png"
    Image.fromarray((rng.random((30, 40)) * 65535).astype(np.uint16)).save(p16)
    return [*paths, p16]


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("channels", [1, 3])
def test_runtime_preprocess_matches_vtc(bundle: Path, tmp_path: Path, resize: str,
                                        channels: int) -> None:
    b = Bundle.load(bundle)
    b.resize, b.channels = resize, channels
    b.mean, b.std = np.asarray([0.4] * channels, np.float32), np.asarray([0.2] * channels,
                                                                           np.float32)
    for p in _images(tmp_path):
        with Image.open(p) as img:
            ours = b.preprocess(img)
            theirs = normalize(vtc_fit(img, (32, 32), resize, channels)[None], [0.4] * channels,
                               [0.2] * channels)[0]
        assert ours.shape == (channels, 32, 32) and ours.dtype == np.float32
        assert float(np.abs(ours - theirs).max()) <= 1e-6, (p.name, resize, channels)


def test_runtime_run_matches_the_bundle(bundle: Path) -> None:
    b = Bundle.load(bundle)
    with np.load(bundle / "samples" / "inputs.npz") as f:
        x = f["pixel_values"]
    with np.load(bundle / "samples" / "reference.npz") as f:
        ref = f["engine"]
    assert b.batch == 2 and len(x) >= 3
    out = b.run(list(x[:3]))["logits"]  # an odd count: the last batch is padded
    assert out.shape == ref[:3].shape and float(np.abs(out - ref[:3]).max()) < 1e-4


_SHIM = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'pydantic'):
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['vtc.runtime', *sys.argv[1:]]
try:
    runpy.run_module('vtc.runtime', run_name='__main__', alter_sys=True)
finally:
    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
    print('HEAVY', heavy, file=sys.stderr)
"""


def test_python_m_vtc_runtime_without_torch(bundle: Path, tmp_path: Path) -> None:
    paths = _images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_text("not an image")
    res = _run(["-c", _SHIM, str(bundle), "--images", str(tmp_path / "imgs"), "--top-k", "3"],
               cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stderr and "broken.png" in res.stderr
    assert "padded with 1 repeat" in res.stderr  # 5 images at batch 2
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [ln["file"] for ln in lines] == sorted(p.name for p in paths)
    b = Bundle.load(bundle)
    want = b.run([b.preprocess(p) for p in sorted(paths)])["logits"]
    for ln, row in zip(lines, want, strict=True):
        assert ln["output"] == "logits" and ln["shape"] == [10] and len(ln["top_k"]) == 3
        assert ln["top_k"][0][0] == int(np.argmax(row))
        assert ln["top_k"][0][1] == pytest.approx(float(row.max()), abs=1e-5)


def test_python_m_vtc_runtime_bad_input(bundle: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT)}
    for args, words in [([str(tmp_path), "--images", str(tmp_path)], "not a vtc bundle"),
                        ([str(bundle), "--images", str(tmp_path / "none")], "not a directory"),
                        ([str(bundle), "--images", str(tmp_path)], "no readable images"),
                        ([str(bundle), "--images", str(tmp_path), "--batch", "3"],
                         "static at batch 2")]:
        res = _run(["-m", "vtc.runtime", *args], cwd=ROOT, env=env)
        assert res.returncode == 2 and words in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr


# ---- trt/check.py's TensorRT plumbing against a stand-in (no GPU here) ------------------

class _FakeCudart:
    """libcudart's calls check.py makes, on host memory (a 'device pointer' is an address)."""

    def __init__(self) -> None:
        self.blocks: list[object] = []

    def cudaMalloc(self, ref: object, size: object) -> int:  # the C names
        import ctypes

        buf = ctypes.create_string_buffer(int(size.value))  # type: ignore[attr-defined]
        self.blocks.append(buf)
        ref._obj.value = ctypes.addressof(buf)  # type: ignore[attr-defined]
        return 0

    def cudaMemcpy(self, dst: object, src: object, size: object, kind: int) -> int:
        import ctypes

        ctypes.memmove(dst, src, size.value)  # type: ignore[attr-defined, arg-type]
        return 0

    def cudaStreamCreate(self, ref: object) -> int:
        ref._obj.value = 1  # type: ignore[attr-defined]
        return 0

    def cudaStreamSynchronize(self, stream: object) -> int:
        return 0


def _fake_tensorrt(onnx_path: Path) -> object:
    """The TensorRT 10 names check.py uses; the 'engine' runs model.onnx in onnxruntime
    on the buffers check.py filled, so the plumbing (shapes, dtypes, copies) is real."""
    import ctypes
    import types

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    io = {t.name: t for t in [*ins, *outs]}
    trt = types.SimpleNamespace(__version__="10.fake", Builder=None)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    trt.nptype = lambda dt: np.float32 if dt == "tensor(float)" else np.int64

    class Ctx:
        def __init__(self) -> None:
            self.shapes = {t.name: tuple(t.shape) for t in [*ins, *outs]}
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.shapes[name]

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addr[name] = ptr
            return True

        def _array(self, name: str) -> np.ndarray:
            dtype = np.dtype(trt.nptype(io[name].type))
            shape = self.shapes[name]
            n = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_char * n).from_address(self.addr[name])
            return np.frombuffer(raw, dtype).reshape(shape)

        def execute_async_v3(self, stream: int) -> bool:
            res = sess.run(None, {t.name: self._array(t.name).copy() for t in ins})
            for t, v in zip(outs, res, strict=True):
                self._array(t.name)[...] = v
            return True

    engine = types.SimpleNamespace(
        num_io_tensors=len(io), get_tensor_name=lambda i: list(io)[i],
        get_tensor_mode=lambda n: "in" if n in {t.name for t in ins} else "out",
        get_tensor_dtype=lambda n: io[n].type, create_execution_context=Ctx)
    trt.Runtime = lambda logger: types.SimpleNamespace(
        deserialize_cuda_engine=lambda plan: engine if plan == b"fake-plan" else None)

    class Config:
        def set_flag(self, flag: str) -> None:
            trt.flags = [flag]

        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> None:
            return None

        def get_timing_cache(self) -> object:
            return types.SimpleNamespace(serialize=lambda: b"cache")

        def add_optimization_profile(self, profile: object) -> None:
            return None

    network = types.SimpleNamespace(num_inputs=len(ins), get_input=lambda i: types.SimpleNamespace(
        name=ins[i].name, shape=tuple(ins[i].shape)))
    trt.OnnxParser = lambda net, log: types.SimpleNamespace(
        parse_from_file=lambda p: Path(p).resolve() == onnx_path.resolve(), num_errors=0)
    trt.Builder = lambda log: types.SimpleNamespace(
        create_network=lambda flags: network, create_builder_config=Config,
        create_optimization_profile=lambda: types.SimpleNamespace(),
        build_serialized_network=lambda net, cfg: b"fake-plan")
    return trt


def test_check_py_tensorrt_plumbing_with_a_stand_in(bundle: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """No GPU here: check.py's TensorRT path (build, plan and timing cache written, load,
    device buffers, copies both ways) against a stand-in that computes with onnxruntime.
    What it cannot show: that TensorRT 10 itself behaves as the stand-in assumes."""
    import importlib.util
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    spec = importlib.util.spec_from_file_location("trt_check_copy", copy / "trt" / "check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fake = _fake_tensorrt(copy / "model.onnx")
    monkeypatch.setattr(mod, "tensorrt_module", lambda: fake)
    monkeypatch.setattr(mod, "_cudart", _FakeCudart)
    assert mod.main(["--runtime", "tensorrt", "--seconds", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "TensorRT 10.fake, built trt/model.plan (fp16 allowed)"
    assert out["parity"]["passed"] and out["tiers"]["engine"]["max_abs_diff"] < 1e-4
    assert fake.flags == ["fp16"]  # type: ignore[attr-defined]
    assert (copy / "trt" / "model.plan").read_bytes() == b"fake-plan"
    assert (copy / "trt" / "timing.cache").read_bytes() == b"cache"
    assert mod.main(["--runtime", "tensorrt", "--seconds", "0.1"]) == 0  # loads the plan now
    assert "loaded trt/model.plan" in capsys.readouterr().out
    (copy / "trt" / "model.plan").write_bytes(b"stale")
    assert mod.main(["--runtime", "tensorrt"]) == 2
    assert "delete it and run again" in capsys.readouterr().err


def test_runtime_sessions_take_omp_num_threads(bundle: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m vtc.runtime` runs on OMP_NUM_THREADS threads, as vtc's engines do."""
    from vtc.runtime import open_session

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    sess = open_session(bundle / "model.onnx")
    assert sess.get_session_options().intra_op_num_threads == 3
