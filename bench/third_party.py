"""9. A third-party encoder as users bring it (issue 10's target).

The image-to-text encoder of the issue, rebuilt seeded (tests/torch_encoders.py):
`nn.MultiheadAttention` blocks (batch-first, packed in_proj), a 1-channel 128×512
input, patch 8 → 1,024 tokens, no CLS token, width 256, 8 heads, 6 blocks, its token
sequence as the output a decoder reads. Exported by the dynamo exporter (weights in
`enc.onnx.data`), then `vtc-export enc.onnx` with ToMe at `tome.flops_ratio: 2.0`,
the tokens unmerged to full length for the decoder, batch 1. Target: the compressed
encoder engine ≥ 1.8× the uncompressed one (interleaved timing, one process).
"""

from __future__ import annotations

from pathlib import Path

from vtc.pipeline import Options, run
from vtc.recipe import load_recipe


def third_party_encoder(tmp: Path, repeats: int) -> list[tuple[bool | None, str]]:
    from tests.torch_encoders import Encoder, Spec, export

    spec = Spec("mha", batch_first=True, cls=False, channels=1, height=128, width=512,
                dim=256, heads=8, depth=6)
    d = tmp / "third-party"
    d.mkdir()
    src = export(Encoder(spec), d / "enc.onnx", batch=1, dynamo=True)
    rec = load_recipe("tome-r8", ["tome.r=null", "tome.flops_ratio=2.0", "tokens_out=unmerge",
                                  f"validate.repeats={repeats}", "validate.samples=4"])
    rep = run(Options(source=str(src), recipe=rec, out=d / "bundle", batch=1, force=True,
                      log=lambda _m: None)).report
    th, b = rep.throughput, rep.budget
    assert th is not None
    ok = th.speedup >= 1.8
    return [(ok, f"third-party nn.MultiheadAttention encoder (1×128×512, patch 8, no CLS, "
                 f"dynamo .onnx + .onnx.data), batch 1, ToMe flops_ratio 2.0 unmerged: tokens "
                 f"{b.tokens_in}→{b.tokens_out}, FLOPs ratio {b.flops_ratio:.2f}, "
                 f"{th.baseline_ips:.2f} → {th.compressed_ips:.2f} img/s, speedup "
                 f"{th.speedup:.2f}× [{th.speedup_ci.low:.2f}, {th.speedup_ci.high:.2f}], "
                 f"token cosine {rep.fidelity.cosine_mean:.3f} [target: speedup ≥ 1.8]")]
