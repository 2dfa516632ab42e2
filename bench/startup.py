"""0. Start-up (issue 19's target): `vtc --help` and `vtc lint-trt FILE` each answer in
under 1.5 s, median of 5 runs, each a fresh process started the way a user starts it (the
`vtc` console script beside this Python, else `python -c "from vtc.cli import main"`).

FILE is a ViT-shaped ONNX built here with onnx.helper (no torch, so this section takes a
few seconds): patch-embedding Conv, CLS token and positions, 3 pre-norm attention blocks
(width 64, 4 heads, 17 tokens, Erf GELU MLP) and a classification head, opset 18, batch 2:
the shape of the tests' tiny exported ViT (`vtc inspect` finds the same 3 blocks of 17
tokens; its TensorRT lint is clean). One untimed run of each command first fills the page
cache and the bytecode caches, as any later call finds them.

`python -m bench.startup` runs this section alone.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LIMIT_S = 1.5
RUNS = 5


def vtc_command() -> list[str]:
    """The `vtc` console script of this environment (else the same entry through -c)."""
    script = Path(sys.executable).parent / "vtc"
    if script.is_file():
        return [str(script)]
    found = shutil.which("vtc")
    return [found] if found else [sys.executable, "-c", "from vtc.cli import main; main()"]


def tiny_vit_onnx(path: Path, blocks: int = 3, width: int = 64, heads: int = 4,
                  batch: int = 2, image: int = 32, patch: int = 8, labels: int = 10) -> Path:
    """A seeded ViT-shaped graph: pixel_values `[B, 3, H, W]` → logits `[B, labels]`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    n = (image // patch) ** 2 + 1  # tokens, CLS included
    hd = width // heads
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(name: str, *shape: int) -> str:
        return const(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def ints(name: str, *v: int) -> str:
        return const(name, np.array(v, dtype=np.int64))

    def linear(x: str, name: str, fan_in: int, fan_out: int) -> str:
        mm = op("MatMul", [x, weight(f"{name}.w", fan_in, fan_out)], f"{name}.mm")
        return op("Add", [mm, weight(f"{name}.b", fan_out)], name)

    def norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.g", np.ones(width, np.float32)),
                                          const(f"{name}.b", np.zeros(width, np.float32))],
                  name, axis=-1, epsilon=1e-12)

    x = op("Conv", ["pixel_values", weight("patch.w", width, 3, patch, patch),
                    weight("patch.b", width)], "patch", kernel_shape=[patch, patch],
           strides=[patch, patch])
    x = op("Reshape", [x, ints("patch.shape", batch, width, n - 1)], "patch.flat")
    x = op("Transpose", [x], "patch.tokens", perm=[0, 2, 1])
    cls = op("Expand", [weight("cls", 1, 1, width), ints("cls.shape", batch, 1, width)],
             "cls.batch")
    x = op("Concat", [cls, x], "tokens", axis=1)
    x = op("Add", [x, weight("pos", 1, n, width)], "embed")
    for i in range(blocks):
        b = f"block{i}"
        qkv = linear(norm(x, f"{b}.ln1"), f"{b}.qkv", width, 3 * width)
        qkv = op("Reshape", [qkv, ints(f"{b}.qkv.shape", batch, n, 3, heads, hd)],
                 f"{b}.qkv.heads")
        qkv = op("Transpose", [qkv], f"{b}.qkv.t", perm=[2, 0, 3, 1, 4])  # [3, B, H, N, hd]
        q, k, v = (op("Gather", [qkv, const(f"{b}.{s}.i", np.array(j, np.int64))], f"{b}.{s}",
                      axis=0)
                   for j, s in enumerate("qkv"))
        kt = op("Transpose", [k], f"{b}.kt", perm=[0, 1, 3, 2])
        scores = op("Mul", [op("MatMul", [q, kt], f"{b}.qk"),
                            const(f"{b}.scale", np.array(hd ** -0.5, np.float32))],
                    f"{b}.scores")
        probs = op("Softmax", [scores], f"{b}.probs", axis=-1)  # [B, H, N, N]
        ctx = op("Transpose", [op("MatMul", [probs, v], f"{b}.ctx")], f"{b}.ctx.t",
                 perm=[0, 2, 1, 3])
        ctx = op("Reshape", [ctx, ints(f"{b}.ctx.shape", batch, n, width)], f"{b}.ctx.flat")
        x = op("Add", [x, linear(ctx, f"{b}.proj", width, width)], f"{b}.res1")
        h = linear(norm(x, f"{b}.ln2"), f"{b}.fc1", width, 2 * width)
        erf = op("Erf", [op("Div", [h, const(f"{b}.sqrt2", np.array(2 ** 0.5, np.float32))],
                            f"{b}.h.s")], f"{b}.erf")
        half = const(f"{b}.half", np.array(0.5, np.float32))
        one = const(f"{b}.one", np.array(1.0, np.float32))
        gelu = op("Mul", [op("Mul", [h, half], f"{b}.h.half"),
                          op("Add", [erf, one], f"{b}.erf1")], f"{b}.gelu")
        x = op("Add", [x, linear(gelu, f"{b}.fc2", 2 * width, width)], f"{b}.out")
    first = op("Gather", [norm(x, "final.ln"), const("cls.i", np.array(0, np.int64))],
               "cls.out", axis=1)
    logits = linear(first, "logits", width, labels)
    graph = helper.make_graph(
        nodes, "tiny-vit",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                       [batch, 3, image, image])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [batch, labels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def time_command(argv: list[str], runs: int = RUNS) -> list[float]:
    """Wall seconds of `runs` fresh processes (after one untimed run); each must exit 0."""
    subprocess.run(argv, capture_output=True, check=True)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def startup(tmp: Path) -> list[tuple[bool | None, str]]:
    """One line per command: the median of 5 start-ups against LIMIT_S."""
    model = tiny_vit_onnx(tmp / "tiny_vit.onnx")
    vtc = vtc_command()
    lines: list[tuple[bool | None, str]] = []
    for label, args in (("vtc --help", ["--help"]),
                        ("vtc lint-trt tiny_vit.onnx", ["lint-trt", str(model)])):
        times = time_command([*vtc, *args])
        med = statistics.median(times)
        lines.append((med < LIMIT_S, f"start-up `{label}`: median {med:.2f} s of {RUNS} "
                      f"(min {min(times):.2f}, max {max(times):.2f}) < {LIMIT_S} s"))
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vtc-bench-startup-") as d:
        lines = startup(Path(d))
    for ok, text in lines:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
