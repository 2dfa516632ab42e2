"""Engine options a recipe's `backend:` section sets, and the two configurations the
pipeline derives from them.

* the **deployed** configuration: the recipe's precision (fp32 | fp16 | int8) and provider
  options as given (e.g. the CUDA EP's default TF32 MatMuls, `enable_cuda_graph`);
  it is what the bundle ships and what throughput is measured on;
* the **reference** configuration: fp32, with TF32 off on the CUDA EP (`use_tf32=0`)
  and no CUDA graph. Parity runs on it: TF32 rounds MatMul inputs to 10 mantissa bits,
  enough to flip merge decisions (a 2e-3 difference in the uncompressed ViT-B/16
  output on an H100 grew to 5e-2 after ToMe's decisions followed it), so only fp32
  engines can be held to the eager reference at 1e-4. The deployed engine is judged
  against the reference one as fidelity (`Report.deployment`).

Provider and option names are checked against the installed onnxruntime and a table of
the options each execution provider documents, before any work (`check_ort`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from vtc.errors import InputError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"

Precision = Literal["fp32", "fp16", "int8"]
CudaGraph = Literal["auto", "on", "off"]
# what a weight MatMul/Gemm does in a block (`vtc.passes.matmul_roles`): the layer roles
# `backend.int8_keep_fp32` can keep out of int8
Int8Role = Literal["attention_in", "attention_out", "mlp_in", "mlp_out", "other"]
# int8 activations: static (ranges calibrated on images, QDQ) or dynamic (each MatMul's
# input range measured per call, no calibration: ORT's quantize_dynamic)
Int8Activations = Literal["static", "dynamic"]

# The onnxruntime package that offers each execution provider (onnxruntime's docs).
PACKAGES: dict[str, str] = {
    CUDA: "onnxruntime-gpu (CUDA 12/13 build, with the CUDA and cuDNN libraries)",
    TRT_EP: "onnxruntime-gpu (with the TensorRT libraries)",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "DmlExecutionProvider": "onnxruntime-directml",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "CoreMLExecutionProvider": "onnxruntime (macOS build)",
    CPU: "onnxruntime",
}

# Provider options the execution providers document (onnxruntime 1.2x/1.3x docs:
# CUDA-ExecutionProvider.md, TensorRT-ExecutionProvider.md). The CPU EP takes none.
KNOWN_OPTIONS: dict[str, frozenset[str]] = {
    CPU: frozenset(),
    CUDA: frozenset({
        "device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search",
        "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d",
        "enable_cuda_graph", "enable_skip_layer_norm_strict_mode", "use_tf32", "prefer_nhwc",
        "use_ep_level_unified_stream", "tunable_op_enable", "tunable_op_tuning_enable",
        "tunable_op_max_tuning_duration_ms", "sdpa_kernel", "fuse_conv_bias",
        "has_user_compute_stream", "user_compute_stream",
    }),
    TRT_EP: frozenset({
        "device_id", "trt_max_workspace_size", "trt_fp16_enable", "trt_bf16_enable",
        "trt_int8_enable", "trt_engine_cache_enable", "trt_engine_cache_path",
        "trt_timing_cache_enable", "trt_timing_cache_path", "trt_builder_optimization_level",
        "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_enable",
        "trt_dla_core", "trt_dump_subgraphs", "trt_force_sequential_engine_build",
        "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
        "trt_cuda_graph_enable", "trt_profile_min_shapes", "trt_profile_max_shapes",
        "trt_profile_opt_shapes", "trt_detailed_build_log", "trt_sparsity_enable",
        "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths",
        "trt_build_heuristics_enable", "trt_ep_context_file_path", "trt_dump_ep_context_model",
        "trt_weight_stripped_engine_enable", "trt_onnx_model_folder_path",
        "has_user_compute_stream", "user_compute_stream",
    }),
}


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a thread count, or None when it is unset or not a positive
    integer: the engines' thread count when a recipe sets no ``backend.threads``, so that
    ONNX Runtime and OpenVINO use the threads torch (which reads the same variable) uses,
    e.g. one each when CI runs jobs side by side on the same cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def option_value(v: object) -> str:
    """Provider options travel to onnxruntime as strings (True → "1")."""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


@dataclass(frozen=True)
class EngineOptions:
    """The recipe's `backend:` section, as the engines read it."""

    providers: tuple[str, ...] = (CPU,)  # ORT execution providers, in priority order
    threads: int | None = None  # ORT intra-op threads
    # fp16: fp16 arithmetic, fp32 inputs/outputs/decisions; int8: weight MatMuls int8
    precision: Precision = "fp32"
    # int8: the layer roles kept fp32 (None: the mode's, vtc.passes.quantize.DEFAULT_KEEP_FP32)
    int8_keep_fp32: tuple[Int8Role, ...] | None = None
    int8_activations: Int8Activations = "static"  # int8: calibrated or per-call ranges
    provider_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    cuda_graph: CudaGraph = "auto"  # auto: on when every node runs on the CUDA EP
    io_binding: bool = True  # timing binds inputs and outputs on the device
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # TensorRT profile
    # the engine's own settings (`backend.options`, validated by its `Engine.options`)
    engine: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    def options_for(self, provider: str) -> dict[str, str]:
        return dict(self.provider_options.get(provider, {}))

    def reference(self) -> EngineOptions:
        """The parity configuration: fp32, TF32 off on the CUDA EP, no CUDA graph."""
        opts = {p: dict(o) for p, o in self.provider_options.items()}
        if CUDA in self.providers:
            cuda = opts.setdefault(CUDA, {})
            cuda["use_tf32"] = "0"
            cuda.pop("enable_cuda_graph", None)
        return replace(self, precision="fp32", provider_options=opts, cuda_graph="off")

    def differs_from_reference(self) -> bool:
        """Whether the deployed engine computes anything differently from the reference
        one (fp16, int8, or the CUDA EP with TF32 left on): then it gets its own engines and
        is judged as fidelity against the reference."""
        if self.precision != "fp32":
            return True
        if CUDA in self.providers:
            return self.options_for(CUDA).get("use_tf32", "1") != "0"
        return False


def check_ort(opts: EngineOptions, available: list[str], version: str) -> None:
    """Refuse (one line each, before any work) a provider this onnxruntime lacks, options
    for a provider that is not requested, an option the provider does not document, and
    a CUDA graph without the CUDA EP."""
    for p in opts.providers:
        if p not in available:
            pkg = PACKAGES.get(p, "an onnxruntime build that has it")
            raise InputError(
                f"backend.providers: {p} is not in the installed onnxruntime {version} "
                f"(it offers {', '.join(available)}); install {pkg} instead of the current "
                "onnxruntime package (never both), or drop it from backend.providers")
    for p, o in opts.provider_options.items():
        if p not in opts.providers:
            raise InputError(f"backend.provider_options names {p}, which backend.providers "
                             f"does not request ({', '.join(opts.providers)}); add it there "
                             "or drop its options")
        known = KNOWN_OPTIONS.get(p)
        if known is None:
            continue  # a provider vtc has no table for: onnxruntime itself checks
        for name in o:
            if name not in known:
                hint = (f"known: {', '.join(sorted(known))}" if known
                        else "it takes no provider options")
                raise InputError(f"backend.provider_options.{p}.{name} is not an option of "
                                 f"{p} ({hint})")
    if CUDA not in opts.providers and opts.cuda_graph == "on":
        raise InputError("backend.cuda_graph: on needs the CUDA execution provider; add "
                         f"{CUDA} to backend.providers (onnxruntime-gpu) or set cuda_graph: "
                         "auto")
    if opts.options_for(CUDA).get("enable_cuda_graph") not in (None, "0") \
            and opts.cuda_graph == "off":
        raise InputError("backend.provider_options sets enable_cuda_graph but backend.cuda_graph"
                         " is off; set one of them, not both (cuda_graph: on)")


def cuda_graph_decision(opts: EngineOptions, placement: Mapping[str, str]
                        ) -> tuple[bool, list[str]]:
    """Whether the deployed engine runs as a CUDA graph, and the nodes that keep it from
    one (placed on another provider than the CUDA EP). `placement`: node → provider of
    one profiled run (`vtc.backends.ort.node_placement`). A graph replays only kernels
    of the CUDA EP, so one node elsewhere rules it out; `cuda_graph: on` then fails
    with the list (a `InputError`), `auto` runs without it and reports the list."""
    if CUDA not in opts.providers or opts.cuda_graph == "off":
        return False, []
    elsewhere = sorted(n for n, p in placement.items() if p != CUDA)
    if elsewhere and opts.cuda_graph == "on":
        shown = ", ".join(elsewhere[:12]) + (f" … ({len(elsewhere)} in all)"
                                             if len(elsewhere) > 12 else "")
        raise InputError(f"backend.cuda_graph: on, but {len(elsewhere)} node(s) fall back from "
                         f"the CUDA execution provider: {shown}; set cuda_graph: auto (runs "
                         "without a CUDA graph) or change the graph so they run on CUDA")
    return not elsewhere, elsewhere
