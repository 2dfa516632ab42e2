"""9. A third-party encoder as users bring it (issue 10's target).

The image-to-text encoder of the issue, rebuilt seeded (tests/torch_encoders.py):
`nn.MultiheadAttention` blocks (batch-first, packed in_proj), a 1-channel 128×512
input, patch 8 → 1,024 tokens, no CLS token, width 256, 8 heads, 6 blocks, its token
sequence as the output a decoder reads. 12 blocks, width 256, 8 heads. Exported by
the dynamo exporter at batch 8 (weights in `enc.onnx.data`), then `vtc-export
enc.onnx` with ToMe at `tome.flops_ratio: 2.0`, the tokens unmerged to full length
for the decoder. Target: the compressed encoder engine ≥ 1.8× the uncompressed one
(interleaved timing, one process), with `tome.proportional_attention: false`. With
proportional attention on (ToMe's default) the same budget is reported for
information: its log-size bias is one more Add over every `[B·H, N, N]` score
tensor, which ORT does not fuse into the attention MatMul (fused attention with a
bias input is issue 9's work).
"""

from __future__ import annotations

from pathlib import Path

from vtc.pipeline import Options, run
from vtc.recipe import load_recipe


def third_party_encoder(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    from tests.torch_encoders import Encoder, Spec, export

    spec = Spec("mha", batch_first=True, cls=False, channels=1, height=128, width=512,
                dim=256, heads=8, depth=12)
    d = tmp / "third-party"
    d.mkdir()
    batch = 8
    src = export(Encoder(spec), d / "enc.onnx", batch=batch, dynamo=True)
    lines: list[tuple[bool | None, str]] = []
    for prop in (False, True):
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
                f"token cosine {rep.fidelity.cosine_mean:.3f}")
        lines.append((None, text) if prop else (th.speedup >= 1.8,
                                                text + " [target: speedup ≥ 1.8]"))
    return lines
