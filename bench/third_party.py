"""9. A third-party encoder as users bring it (issues 10 and 20).

The image-to-text encoder of the issue, rebuilt seeded (tests/torch_encoders.py):
`nn.MultiheadAttention` blocks (batch-first, packed in_proj), a 1-channel 128×512
input, patch 8 → 1,024 tokens, no CLS token, width 256, 8 heads, 12 blocks, its token
sequence as the output a decoder reads. Exported by the dynamo exporter at batch 8
(weights in `enc.onnx.data`), then `vtc-export enc.onnx` with ToMe at
`tome.flops_ratio: 2.0`, the tokens unmerged to full length for the decoder. Targets
(issue 20): the compressed encoder engine ≥ 1.9× the uncompressed one with
`tome.proportional_attention: false`, ≥ 1.85× with it on (ToMe's default: the log-size
bias rides in the fused attention's `attention_bias`, one `[B, 1, N, N]` for every
head), interleaved timing in one process.

`python -m bench.third_party [--repeats 20] [--only off|on]`
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.run import formulations
from vtc.pipeline import Options, run
from vtc.recipe import load_recipe

TARGET = {False: 1.9, True: 1.85}  # speedup, by proportional attention


def third_party_encoder(tmp: Path, repeats: int, only: bool | None = None
                        ) -> list[tuple[bool | None, str]]:
    from tests.torch_encoders import Encoder, Spec, export

    spec = Spec("mha", batch_first=True, cls=False, channels=1, height=128, width=512,
                dim=256, heads=8, depth=12)
    d = tmp / "third-party"
    d.mkdir()
    batch = 8
    src = export(Encoder(spec), d / "enc.onnx", batch=batch, dynamo=True)
    lines: list[tuple[bool | None, str]] = []
    for prop in (False, True) if only is None else (only,):
        rec = load_recipe("tome-r8", [
            "tome.r=null", "tome.flops_ratio=2.0", "tokens_out=unmerge",
            f"tome.proportional_attention={str(prop).lower()}", f"validate.repeats={repeats}",
            "validate.samples=8"])
        rep = run(Options(source=str(src), recipe=rec, out=d / f"bundle-{prop}", batch=batch,
                          force=True, log=lambda _m: None)).encoder
        th, b = rep.throughput, rep.budget
        assert th is not None
        ci = th.speedup_ci
        text = (f"third-party nn.MultiheadAttention encoder (1×128×512, patch 8, no CLS, 12 "
                f"blocks, dynamo .onnx + .onnx.data), batch {batch}, ToMe flops_ratio 2.0, "
                f"proportional attention {'on' if prop else 'off'}, unmerged: tokens "
                f"{b.tokens_in}→{b.tokens_out}, FLOPs ratio {b.flops_ratio:.2f}, "
                f"{th.baseline_ips:.2f} → {th.compressed_ips:.2f} img/s, speedup "
                f"{th.speedup:.2f}× (paired {ci.estimate:.2f}× [{ci.low:.2f}, {ci.high:.2f}]), "
                f"token cosine {rep.fidelity.cosine_mean:.3f}; {formulations(rep.to_dict())}")
        lines.append((th.speedup >= TARGET[prop], text + f" [target: speedup ≥ {TARGET[prop]}]"))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", choices=["off", "on"], default=None,
                    help="proportional attention off or on only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vtc-bench-") as d:
        lines = third_party_encoder(Path(d), args.repeats,
                                    None if args.only is None else args.only == "on")
    for ok, text in lines:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
