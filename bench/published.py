"""Bench section: vtc's engines against the published algorithms, at ViT-S/16 size.

A seeded ViT-S/16 classifier (224 px, 197 tokens, random weights) is exported,
rewritten with vtc's ToMe (both splits) and PiToMe at r = 8, and run in ONNX
Runtime; the independent implementations in tests/reference/ (written from the
papers' reference code, without vtc) give the expected logits. Target: ToMe with
the default split and PiToMe match them to 1e-4; the earlier split
(`tome.protected: outside`) is reported for comparison.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _model() -> Any:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                    intermediate_size=1536, image_size=224, patch_size=16)
    cfg.num_labels = 1000
    return ViTForImageClassification(cfg).eval()


def published(tmp: Path) -> list[tuple[bool | None, str]]:
    import onnx_ir as ir
    import onnxruntime as ort
    import torch

    from tests.budgets import pitome_budget, tome_budget
    from tests.reference.pitome_reference import pitome_forward
    from tests.reference.tome_reference import tome_forward
    from vtc.exporter import get_family
    from vtc.exporter.export import export_onnx
    from vtc.passes import load
    from vtc.stages.compress import rewrite

    model = _model()
    family = get_family("vit")
    geo = family.geometry(model, 224)
    path = export_onnx(family, model, 4, 224, tmp / "vit-s16.onnx")
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))

    def engine(budget: Any) -> np.ndarray:
        m = load(path)
        rewrite(m, budget)
        sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]

    with torch.no_grad():
        tome_ref = tome_forward(model, x, r=8)["logits"].numpy()
        pitome_ref = pitome_forward(model, x, r=8)["logits"].numpy()
    rows: list[tuple[bool | None, str]] = []
    for label, budget, ref, target in (
        ("tome-r8 (protected: inside, the default)", tome_budget(geo, r=8), tome_ref, True),
        ("tome-r8 (protected: outside, vtc's earlier split)",
         tome_budget(geo, r=8, protected="outside"), tome_ref, False),
        ("pitome-r8", pitome_budget(geo, r=8), pitome_ref, True),
    ):
        d = float(np.abs(engine(budget) - ref).max())
        rows.append((d <= 1e-4 if target else None,
                     f"ViT-S/16 (seeded) {label} vs the published algorithm "
                     f"(tests/reference): max |Δ logit| {d:.2e}"
                     + (" [target ≤ 1e-4]" if target else " (for comparison)")))
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        for ok, text in published(Path(d)):
            print(f"{'info' if ok is None else 'PASS' if ok else 'FAIL'}  {text}")
