"""ONNX Runtime backend, plus helpers that inspect what ORT's optimizer fused.

ORT runs the graph as exported (inputs e.g. ``pixel_values`` float32
``[B, 3, H, W]``); with ``optimized_model_path`` it also writes the graph after
its own fusions (LayerNorm, GELU, attention, ...), which ``fused_op_counts``
reads so a report can show whether token compression broke any fusion.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from vtc.backends.base import BackendUnavailable, Runner

CPU = "CPUExecutionProvider"

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
    ) -> None:
        self.model_path = Path(model_path)
        # CPU is always last: nodes another provider cannot take run there.
        requested = [p for p in (providers or []) if p != CPU]
        self.requested_providers: list[str] = [*requested, CPU]
        self.providers: list[str] = list(self.requested_providers)
        self.optimized_model_path = optimized_model_path
        self.intra_op_threads = intra_op_threads
        self.allow_fallback = allow_fallback
        self._session: ort.InferenceSession | None = None

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
        with warnings.catch_warnings():
            # ORT warns about missing providers; we check and report them below.
            warnings.filterwarnings("ignore", message=".*provider.*", category=UserWarning)
            session = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=self.requested_providers
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
        """Run the session; returns every output as a numpy array (e.g. ``[B, K]``)."""
        sess = self._sess()
        names = self.output_names
        values = sess.run(names, feeds)
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}

    def close(self) -> None:
        self._session = None


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
