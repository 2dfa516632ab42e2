"""The prices of the budget's cost model (`vtc.budget.ENGINE_COSTS`), measured on this
machine for the CPU engines: ONNX Runtime's CPU EP and OpenVINO's CPU plugin.

* launch: the time one more node adds — a chain of 400 small elementwise nodes (Add,
  Mul, Equal, Where on `[8, 1, 197]`, the size of a site's per-token bookkeeping)
  against a chain of 40, divided by the 360 nodes between them;
* MACs: a batched MatMul `[8, 181, 197] × [8, 197, 768]` (the assignment MatMul of the
  first ViT-B/16 tome-r16 site) per µs;
* elements: a GatherND of 181 rows of 768 out of `[8, 197, 768]` (the row gathers of
  the same site) per µs.

Each figure is the median of `--repeats` interleaved rounds (other work on the machine
shifts all of them alike). GPU prices cannot be measured here; `vtc.budget` states them
as assumptions. `python -m bench.cost_model [--repeats 30]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

Runner = Callable[[], object]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], out: str,
           inits: list[onnx.TensorProto]) -> bytes:
    graph = oh.make_graph(nodes, "g", inputs, [oh.make_tensor_value_info(out, TP.FLOAT, None)],
                          initializer=inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]).SerializeToString()


def _chain(n: int) -> bytes:
    """n small nodes in a chain on `[8, 1, 197]` (a site's per-token bookkeeping): Add,
    Mul, Equal and Where, repeated — elementwise, so that the chain measures what a node
    costs beyond its work (ONNX Runtime does not fuse these on the CPU EP)."""
    nodes: list[onnx.NodeProto] = []
    cur, i = "x", 0
    one = nh.from_array(np.ones(1, np.float32), "one")
    half = nh.from_array(np.full(1, 0.5, np.float32), "half")
    while len(nodes) < n:
        nodes += [oh.make_node("Add", [cur, "one"], [f"a{i}"]),
                  oh.make_node("Mul", [f"a{i}", "half"], [f"m{i}"]),
                  oh.make_node("Equal", [f"m{i}", "one"], [f"e{i}"]),
                  oh.make_node("Where", [f"e{i}", "half", f"m{i}"], [f"w{i}"])]
        cur, i = f"w{i}", i + 1
    x = oh.make_tensor_value_info("x", TP.FLOAT, [8, 1, 197])
    return _model(nodes, [x], cur, [one, half])


def _matmul() -> bytes:
    w = oh.make_tensor_value_info("w", TP.FLOAT, [8, 181, 197])
    x = oh.make_tensor_value_info("x", TP.FLOAT, [8, 197, 768])
    return _model([oh.make_node("MatMul", ["w", "x"], ["y"])], [w, x], "y", [])


def _gather() -> bytes:
    x = oh.make_tensor_value_info("x", TP.FLOAT, [8, 197, 768])
    i = oh.make_tensor_value_info("i", TP.INT64, [8, 181, 1])
    return _model([oh.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)], [x, i], "y", [])


def _feeds() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    idx = np.stack([rng.permutation(197)[:181] for _ in range(8)]).astype(np.int64)[..., None]
    return {
        "chain": {"x": rng.standard_normal((8, 1, 197)).astype(np.float32)},
        "matmul": {"w": rng.standard_normal((8, 181, 197)).astype(np.float32),
                   "x": rng.standard_normal((8, 197, 768)).astype(np.float32)},
        "gather": {"x": rng.standard_normal((8, 197, 768)).astype(np.float32), "i": idx},
    }


def _ort(blob: bytes, feeds: dict[str, np.ndarray]) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def _openvino(blob: bytes, feeds: dict[str, np.ndarray]) -> Runner:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(blob, b""), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    args = list(feeds.values())
    return lambda: req.infer(args)


def _time(fn: Runner, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6  # µs per call


def measure(engine: str, repeats: int) -> dict[str, float]:
    """{launch_us, macs_per_us, elements_per_us} for `engine` ("ort" | "openvino")."""
    make = {"ort": _ort, "openvino": _openvino}[engine]
    feeds = _feeds()
    runs = {"short": make(_chain(40), feeds["chain"]), "long": make(_chain(400), feeds["chain"]),
            "matmul": make(_matmul(), feeds["matmul"]), "gather": make(_gather(), feeds["gather"])}
    calls = {"short": 50, "long": 20, "matmul": 5, "gather": 20}
    for fn in runs.values():  # warm-up
        _time(fn, 3)
    rounds: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(repeats):  # interleaved: the load on the machine shifts them alike
        for name, fn in runs.items():
            rounds[name].append(_time(fn, calls[name]))
    med = {n: float(np.median(v)) for n, v in rounds.items()}
    spread = {n: (float(np.percentile(v, 25)), float(np.percentile(v, 75)))
              for n, v in rounds.items()}
    nodes = len(onnx.load_from_string(_chain(400)).graph.node) - len(
        onnx.load_from_string(_chain(40)).graph.node)
    out = {"launch_us": (med["long"] - med["short"]) / nodes,
           "macs_per_us": 8 * 181 * 197 * 768 / med["matmul"],
           "elements_per_us": 8 * 181 * 768 / med["gather"]}
    print(f"{engine}: launch {out['launch_us']:.2f} µs/node (chains: "
          f"{med['short']:.0f} µs [{spread['short'][0]:.0f}, {spread['short'][1]:.0f}] for 40, "
          f"{med['long']:.0f} µs [{spread['long'][0]:.0f}, {spread['long'][1]:.0f}] for 400); "
          f"MatMul {out['macs_per_us']:.3g} MACs/µs ({med['matmul']:.0f} µs "
          f"[{spread['matmul'][0]:.0f}, {spread['matmul'][1]:.0f}]); GatherND "
          f"{out['elements_per_us']:.3g} elements/µs ({med['gather']:.0f} µs "
          f"[{spread['gather'][0]:.0f}, {spread['gather'][1]:.0f}])", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--only", choices=["ort", "openvino"], default=None)
    args = ap.parse_args()
    for engine in ("ort", "openvino"):
        if args.only in (None, engine):
            measure(engine, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
