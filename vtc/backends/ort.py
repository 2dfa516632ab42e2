"""ONNX Runtime backend, plus helpers that inspect what ORT's optimizer fused.

ORT runs the graph as exported (inputs e.g. ``pixel_values`` float32
``[B, 3, H, W]``); with ``optimized_model_path`` it also writes the graph after
its own fusions (LayerNorm, GELU, attention, ...), which ``fused_op_counts``
reads so a report can show whether token compression broke any fusion.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vtc.backends.base import BackendUnavailable, Runner

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# Ops ORT's optimizer produces by fusing several ONNX nodes. Anything in a
# com.microsoft* domain counts as fused too (see _is_fused).
FUSED_OPS: frozenset[str] = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "Gelu",
        "BiasGelu",
        "FastGelu",
        "QuickGelu",
        "FusedMatMul",
        "FusedGemm",
        "FusedConv",
        "Gemm",
        "Attention",
        "MultiHeadAttention",
        "BiasSoftmax",
        "BiasAdd",
    }
)


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build can offer."""
    return list(ort.get_available_providers())


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` behind the :class:`Runner` interface.

    ``providers`` defaults to CPU only. When a requested non-CPU provider does
    not end up in the session (ORT silently falls back to CPU), ``load`` raises
    :class:`BackendUnavailable` unless ``allow_fallback`` is true; either way
    ``self.providers`` holds the providers actually in use after ``load``.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: list[str] | None = None,
        optimized_model_path: Path | None = None,
        intra_op_threads: int | None = None,
        allow_fallback: bool = False,
        provider_options: Mapping[str, Mapping[str, str]] | None = None,
        io_binding: bool = True,
    ) -> None:
        self.model_path = Path(model_path)
        # CPU is always last: nodes another provider cannot take run there.
        requested = [p for p in (providers or []) if p != CPU]
        self.requested_providers: list[str] = [*requested, CPU]
        self.providers: list[str] = list(self.requested_providers)
        self.optimized_model_path = optimized_model_path
        self.intra_op_threads = intra_op_threads
        self.allow_fallback = allow_fallback
        self.provider_options = {p: dict((provider_options or {}).get(p, {}))
                                 for p in self.requested_providers}
        self.io_binding = io_binding
        self._session: ort.InferenceSession | None = None
        self._bound: _Bound | None = None  # the persistent binding of a CUDA-graph session

    @property
    def device(self) -> str:
        """Where inputs and outputs live when bound: "cuda" on the CUDA EP, else "cpu"."""
        return "cuda" if CUDA in self.providers else "cpu"

    @property
    def cuda_graph(self) -> bool:
        return self.provider_options.get(CUDA, {}).get("enable_cuda_graph", "0") not in ("0", "")

    @property
    def name(self) -> str:
        return "ort"

    def _sess(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"{self.model_path.name}: call load() before using the runner")
        return self._session

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._sess().get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._sess().get_outputs()]

    def load(self) -> None:
        if self._session is not None:
            return
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.model_path}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: ORT warns on every save of an ORT_ENABLE_ALL graph (the saved engine
        # is tuned to this machine's CPU, as a TensorRT engine is to its GPU: README).
        opts.log_severity_level = 3
        if self.optimized_model_path is not None:
            self.optimized_model_path.parent.mkdir(parents=True, exist_ok=True)
            opts.optimized_model_filepath = str(self.optimized_model_path)
            if self.model_path.with_name(self.model_path.name + ".data").is_file():
                # a graph past protobuf's 2 GB limit: the engine keeps its weights beside it
                opts.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    self.optimized_model_path.name + ".data")
                opts.add_session_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        if self.intra_op_threads is not None:
            opts.intra_op_num_threads = self.intra_op_threads
        if CUDA in self.requested_providers:
            preload_cuda()
        with warnings.catch_warnings():
            # ORT warns about missing providers; we check and report them below.
            warnings.filterwarnings("ignore", message=".*provider.*", category=UserWarning)
            session = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=self.requested_providers,
                provider_options=[self.provider_options[p] for p in self.requested_providers],
            )
        used = list(session.get_providers())
        missing = [p for p in self.requested_providers if p != CPU and p not in used]
        if missing and not self.allow_fallback:
            raise BackendUnavailable(
                f"ONNX Runtime could not load {', '.join(missing)} for {self.model_path.name}; "
                f"it silently fell back to {', '.join(used)}. Available in this onnxruntime "
                f"build: {', '.join(available_providers())}. Install the matching "
                "onnxruntime-gpu build (and CUDA/cuDNN libraries), or ask for the CPU only "
                "(--set 'backend.providers=[CPUExecutionProvider]')."
            )
        self.providers = used
        self._session = session

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; returns every output as a numpy array (e.g. ``[B, K]``).
        A CUDA-graph session replays from fixed device buffers: the feeds are copied
        into them and the outputs copied out."""
        sess = self._sess()
        if self.cuda_graph:
            if self._bound is None:
                self._bound = _Bound(sess, feeds, self.device, self._device_id())
            self._bound.update(feeds)
            self._bound.run()
            return self._bound.outputs()
        names = self.output_names
        values = sess.run(names, feeds)
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}

    def timed(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        """One call = one batch with inputs and outputs bound on the device (I/O
        binding), so that the timing leaves out host↔device copies and output
        allocation; without `io_binding` the plain `infer`."""
        if not self.io_binding:
            return super().timed(feeds)
        sess = self._sess()
        if self.cuda_graph:
            if self._bound is None:
                self._bound = _Bound(sess, feeds, self.device, self._device_id())
            self._bound.update(feeds)
            return self._bound.run
        return _Bound(sess, feeds, self.device, self._device_id()).run

    def _device_id(self) -> int:
        return int(self.provider_options.get(CUDA, {}).get("device_id", "0") or 0)

    def close(self) -> None:
        self._bound = None
        self._session = None


class _Bound:
    """Inputs and outputs of one session bound to device buffers (ORT I/O binding).
    The output buffers are allocated once, shaped as the session declares them."""

    def __init__(self, sess: ort.InferenceSession, feeds: dict[str, np.ndarray], device: str,
                 device_id: int) -> None:
        self.sess, self.device, self.device_id = sess, device, device_id
        self.io = sess.io_binding()
        self.inputs = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), device,
                                                           device_id) for k, v in feeds.items()}
        for k, v in self.inputs.items():
            self.io.bind_ortvalue_input(k, v)
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        # shapes from the session (static in vtc's engines; a symbolic dim is the batch):
        # a plain run to learn them is not allowed once a CUDA graph is enabled
        self.outs = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
            [d if isinstance(d, int) else batch for d in o.shape], _np_dtype(o.type), device,
            device_id) for o in sess.get_outputs()}
        for n, v in self.outs.items():
            self.io.bind_ortvalue_output(n, v)

    def update(self, feeds: dict[str, np.ndarray]) -> None:
        for k, v in feeds.items():
            self.inputs[k].update_inplace(np.ascontiguousarray(v))

    def run(self) -> None:
        self.sess.run_with_iobinding(self.io)
        if self.device != "cpu":
            self.io.synchronize_outputs()

    def outputs(self) -> dict[str, np.ndarray]:
        return {n: v.numpy() for n, v in self.outs.items()}


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def _np_dtype(onnx_type: str) -> type:
    try:
        return _NP_TYPES[onnx_type]
    except KeyError:
        raise ValueError(f"no I/O binding for an output of type {onnx_type}") from None


def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu needs from the pip packages
    (or torch) that ship them; a no-op where onnxruntime has no `preload_dlls`."""
    pre = getattr(ort, "preload_dlls", None)
    if pre is not None:
        try:
            pre()
        except Exception:
            pass


def node_placement(model_path: str | Path, providers: list[str],
                   provider_options: Mapping[str, Mapping[str, str]],
                   feeds: dict[str, np.ndarray]) -> dict[str, str]:
    """Node name → execution provider, read from ONNX Runtime's profile of one run of
    the optimised graph (the only place the Python API reports where each node ran).
    No CUDA graph in this session: a graph capture hides the nodes."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="vtc-profile-") as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "run")
        plain = {p: {k: v for k, v in o.items() if k != "enable_cuda_graph"}
                 for p, o in provider_options.items()}
        if CUDA in providers:
            preload_cuda()
        sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers,
                                    provider_options=[plain.get(p, {}) for p in providers])
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return placement_from_profile(events)


def placement_from_profile(events: list[dict[str, object]]) -> dict[str, str]:
    """The node → provider map of an ORT profile (its `Node` events carry
    `args.provider`; a node's `_kernel_time` / `_fence_*` events share its name)."""
    out: dict[str, str] = {}
    for e in events:
        args = e.get("args")
        if e.get("cat") != "Node" or not isinstance(args, dict) or "provider" not in args:
            continue
        name = str(e.get("name", ""))
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        out[name] = str(args["provider"])
    return out


def _iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """All nodes of ``graph`` including those in If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub)


def _is_fused(op_type: str, domain: str) -> bool:
    return domain.startswith("com.microsoft") or op_type in FUSED_OPS


def op_counts(model_path: str | Path) -> dict[str, int]:
    """How often each op type occurs in the ONNX file (all domains, subgraphs included)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return dict(Counter(n.op_type for n in _iter_nodes(model.graph)))


def fused_op_counts(model_path: str | Path) -> dict[str, int]:
    """Counts of fused ops (``FUSED_OPS`` or any com.microsoft* domain op) in an
    ORT-optimized ONNX file. Loaded without the checker, since contrib ops fail it."""
    model = onnx.load(str(model_path), load_external_data=False)
    counts = Counter(n.op_type for n in _iter_nodes(model.graph) if _is_fused(n.op_type, n.domain))
    return dict(sorted(counts.items()))


def fusion_summary(
    baseline_counts: dict[str, int], compressed_counts: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Compare fused-op counts of the baseline and compressed optimized graphs.

    Returns ``{"baseline": {...}, "compressed": {...}, "lost": {op: n}, "gained": {op: n}}``
    where ``lost`` lists fused ops the compressed graph has fewer of (a fusion the
    token-compression rewrite prevented) and ``gained`` those it has more of.
    """
    ops = sorted(set(baseline_counts) | set(compressed_counts))
    lost: dict[str, int] = {}
    gained: dict[str, int] = {}
    for op in ops:
        delta = compressed_counts.get(op, 0) - baseline_counts.get(op, 0)
        if delta < 0:
            lost[op] = -delta
        elif delta > 0:
            gained[op] = delta
    return {
        "baseline": dict(sorted(baseline_counts.items())),
        "compressed": dict(sorted(compressed_counts.items())),
        "lost": lost,
        "gained": gained,
    }
