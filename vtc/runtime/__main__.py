"""`python -m vtc.runtime BUNDLE --images DIR`: one JSON line per image on stdout.

Each line: `file` (relative to DIR), `output` (the first graph output, or --output),
`shape` (one image's output shape) and either `top_k` ([[class, logit], …] for a
logits output: name containing "logit", 2-D) or `norm` + `first` (the L2 norm and
the first values of an embedding or token/dense output). Images run in the bundle's
static batch; the last batch is padded with repeats (said on stderr) and only real
images are printed. Unreadable files are skipped with a line on stderr. Exit 0, or 2
with one line naming the problem (no traceback), 3 an internal error (one line and the
file holding its traceback), 130 interrupted (`vtc.errors.guard`). Needs onnxruntime,
numpy, Pillow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image

from vtc.errors import guard, install_signal_handlers
from vtc.runtime import ArgParser, Bundle, BundleError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def summarize(name: str, y: np.ndarray, k: int) -> dict[str, Any]:
    """One image's output → the compact fields of its JSON line."""
    out: dict[str, Any] = {"shape": list(y.shape)}
    flat = y.astype(np.float64).reshape(-1)
    if "logit" in name.lower() and y.ndim == 1:
        top = np.argsort(-flat, kind="stable")[:k]
        out["top_k"] = [[int(i), round(float(flat[i]), 6)] for i in top]
    else:
        out["norm"] = round(float(np.linalg.norm(flat)), 6)
        out["first"] = [round(float(v), 6) for v in flat[:k]]
    return out


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgParser(prog="python -m vtc.runtime", description=__doc__.split(
        "\n\n")[0], epilog="example: python -m vtc.runtime out/ --images photos/ --top-k 3")
    ap.add_argument("bundle", type=Path, help="a vtc-export --out directory")
    ap.add_argument("--images", type=Path, required=True, help="a folder of images")
    ap.add_argument("--batch", type=int, default=None,
                    help="images per run (only for a dynamic-batch bundle; a static one "
                         "runs at its own batch)")
    ap.add_argument("--output", default=None, help="the output to print (default: first)")
    ap.add_argument("--top-k", type=int, default=5, help="classes (or values) per line")
    ap.add_argument("--graph", default="model.onnx", help="model.onnx or model.ort.onnx")
    ap.add_argument("--providers", default="CPUExecutionProvider",
                    help="comma-separated onnxruntime execution providers")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> NoReturn:
    """Parse the flags and run, in `vtc.errors.guard` (its exit codes)."""
    install_signal_handlers()  # before anything else: an interrupt exits 130
    guard(lambda: _run(_args(argv)))


def _run(a: argparse.Namespace) -> int:
    for flag, value in (("--top-k", a.top_k), ("--batch", a.batch)):
        if value is not None and value < 1:
            raise BundleError(f"{flag} {value}: give a whole number ≥ 1")
    providers = [p.strip() for p in a.providers.split(",") if p.strip()]
    if not providers:
        raise BundleError("--providers is empty; give e.g. CPUExecutionProvider")
    b = Bundle.load(a.bundle, providers, a.graph)
    if a.batch is not None and b.batch is not None and a.batch != b.batch:
        raise BundleError(f"--batch {a.batch}: the bundle's engine is static at batch "
                          f"{b.batch}; leave --batch out")
    step = b.batch or a.batch or 1
    output = a.output or b.output_names[0]
    if output not in b.output_names:
        raise BundleError(f"--output {output}: not an output ({', '.join(b.output_names)})")
    if not a.images.is_dir():
        raise BundleError(f"--images {a.images}: not a directory; give a folder of images")
    files = sorted(p for p in a.images.rglob("*")
                   if p.is_file() and p.suffix.lower() in EXTENSIONS)
    names, xs = [], []
    for p in files:
        try:
            xs.append(b.preprocess(p))
            names.append(p.relative_to(a.images).as_posix())
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            print(f"skipped {p}: {type(exc).__name__}", file=sys.stderr)
    if not xs:
        raise BundleError(f"--images {a.images}: no readable images "
                          f"({', '.join(EXTENSIONS)})")
    if len(xs) % step:
        print(f"note: {len(xs)} images in batches of {step}: the last batch is padded with "
              f"{step - len(xs) % step} repeat(s), not printed", file=sys.stderr)
    for start in range(0, len(xs), step):
        chunk = xs[start:start + step]
        y = b.run(chunk)[output]
        for name, row in zip(names[start:start + step], y, strict=True):
            print(json.dumps({"file": name, "output": output, **summarize(output, row, a.top_k)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    main()
