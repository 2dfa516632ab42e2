"""Engine options (`vtc.backends.options`): the reference configuration parity runs on,
the checks against the installed onnxruntime, the CUDA-graph decision from a node
placement, ORT's profile read as a placement, and I/O-bound timing calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.backends.tiny_models import linear_ln_gelu
from vtc.backends.options import (
    CPU,
    CUDA,
    EngineOptions,
    check_ort,
    cuda_graph_decision,
    option_value,
)
from vtc.backends.ort import OrtRunner, node_placement, placement_from_profile
from vtc.errors import InputError

GPU = (CUDA, CPU)


def test_reference_is_fp32_with_tf32_off_and_no_graph() -> None:
    deploy = EngineOptions(providers=GPU, precision="fp16", cuda_graph="on",
                           provider_options={CUDA: {"enable_cuda_graph": "1", "device_id": "1"}})
    ref = deploy.reference()
    assert ref.precision == "fp32" and ref.cuda_graph == "off"
    assert ref.options_for(CUDA) == {"use_tf32": "0", "device_id": "1"}
    assert deploy.options_for(CUDA)["enable_cuda_graph"] == "1"  # the original is untouched
    assert not ref.differs_from_reference()


@pytest.mark.parametrize(("opts", "differs"), [
    (EngineOptions(), False),  # fp32 on the CPU: the reference engines are deployed
    (EngineOptions(precision="fp16"), True),
    (EngineOptions(providers=GPU), True),  # the CUDA EP's default TF32 MatMuls
    (EngineOptions(providers=GPU, provider_options={CUDA: {"use_tf32": "0"}}), False),
])
def test_which_deployments_get_their_own_engines(opts: EngineOptions, differs: bool) -> None:
    assert opts.differs_from_reference() is differs


def test_option_values_travel_as_strings() -> None:
    assert [option_value(v) for v in (True, False, 0, 2.5, "x")] == ["1", "0", "0", "2.5", "x"]


@pytest.mark.parametrize(("opts", "message"), [
    (EngineOptions(providers=GPU), r"CUDAExecutionProvider is not in the installed "
                                   r"onnxruntime 1\.0 .*install onnxruntime-gpu"),
    (EngineOptions(providers=("DmlExecutionProvider", CPU)), r"onnxruntime-directml"),
    (EngineOptions(provider_options={CUDA: {"use_tf32": "0"}}),
     r"names CUDAExecutionProvider, which backend.providers does not request"),
    (EngineOptions(provider_options={CPU: {"use_tf32": "0"}}),
     r"provider_options.CPUExecutionProvider.use_tf32 .*takes no provider options"),
    (EngineOptions(cuda_graph="on"), r"cuda_graph: on needs the CUDA execution provider"),
])
def test_options_this_onnxruntime_cannot_honour_are_refused(opts: EngineOptions,
                                                            message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_ort(opts, [CPU], "1.0")


def test_unknown_cuda_option_is_refused_with_the_known_ones() -> None:
    opts = EngineOptions(providers=GPU, provider_options={CUDA: {"use_tf16": "1"}})
    with pytest.raises(InputError, match=r"use_tf16 is not an option .*known: .*use_tf32"):
        check_ort(opts, [CUDA, CPU], "1.31.1")
    check_ort(EngineOptions(providers=GPU, provider_options={CUDA: {"use_tf32": "0"}}),
              [CUDA, CPU], "1.31.1")  # a CUDA build with the documented options: accepted


def test_cuda_graph_decision() -> None:
    gpu = EngineOptions(providers=GPU)
    on_cuda = {"a": CUDA, "b": CUDA}
    assert cuda_graph_decision(gpu, on_cuda) == (True, [])
    assert cuda_graph_decision(gpu, {**on_cuda, "shape_op": CPU}) == (False, ["shape_op"])
    assert cuda_graph_decision(EngineOptions(providers=GPU, cuda_graph="off"), on_cuda)[0] is False
    assert cuda_graph_decision(EngineOptions(), {"a": CPU}) == (False, [])
    with pytest.raises(InputError, match=r"2 node\(s\) fall back .*: s1, s2; set cuda_graph"):
        cuda_graph_decision(EngineOptions(providers=GPU, cuda_graph="on"),
                            {**on_cuda, "s2": CPU, "s1": CPU})


def test_placement_comes_from_a_profiled_run(tmp_path: Path) -> None:
    model = linear_ln_gelu(tmp_path / "m.onnx")
    x = np.zeros((2, 4, 8), dtype=np.float32)
    where = node_placement(model, [CPU], {}, {"x": x})
    with OrtRunner(model, optimized_model_path=tmp_path / "opt.onnx"):
        pass
    optimised = [n.name for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    # every node of the optimised graph ran, on the CPU (the fused LayerNorm among them)
    assert sorted(where) == sorted(optimised) and set(where.values()) == {CPU}


def test_placement_parser_strips_kernel_suffixes() -> None:
    events = [{"cat": "Node", "name": "mm_kernel_time", "args": {"provider": CUDA}},
              {"cat": "Node", "name": "ln_fence_before", "args": {"provider": CPU}},
              {"cat": "Session", "name": "model_run", "args": {}}]
    assert placement_from_profile(events) == {"mm": CUDA, "ln": CPU}  # type: ignore[arg-type]


@pytest.mark.parametrize("io_binding", [True, False])
def test_timed_calls_run_the_batch(tmp_path: Path, io_binding: bool) -> None:
    model = linear_ln_gelu(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    with OrtRunner(model, io_binding=io_binding) as r:
        call = r.timed({"x": x})
        for _ in range(3):
            call()
        if io_binding:  # the bound outputs hold what a plain run returns
            from vtc.backends.ort import _Bound

            bound = _Bound(r._sess(), {"x": x}, "cpu", 0)
            bound.run()
            np.testing.assert_array_equal(bound.outputs()["y"], r.infer({"x": x})["y"])


def test_provider_options_reach_the_session(tmp_path: Path) -> None:
    model = linear_ln_gelu(tmp_path / "m.onnx")
    with OrtRunner(model, provider_options={CPU: {}}) as r:
        assert r.provider_options == {CPU: {}}
        assert r.device == "cpu" and not r.cuda_graph
    assert CPU in ort.get_available_providers()


@pytest.mark.parametrize(("env", "recipe_threads", "threads"), [
    (None, None, None), ("3", None, 3), ("3", 2, 2), ("0", None, None), ("two", None, None)])
def test_engine_threads_default_to_omp_num_threads(monkeypatch: pytest.MonkeyPatch,
                                                   env: str | None, recipe_threads: int | None,
                                                   threads: int | None) -> None:
    """No `backend.threads`: the engines take OMP_NUM_THREADS (what torch reads); a recipe's
    own count wins; a value that is not a positive integer leaves the engine's default."""
    from vtc.recipe import load_recipe
    from vtc.stages.compile import options

    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    sets = [] if recipe_threads is None else [f"backend.threads={recipe_threads}"]
    assert options(load_recipe("tome-r8", sets)).threads == threads


def test_the_thread_count_reaches_the_session(tmp_path: Path) -> None:
    model = linear_ln_gelu(tmp_path / "m.onnx")
    with OrtRunner(model, intra_op_threads=3) as r:
        assert r._sess().get_session_options().intra_op_num_threads == 3
