"""Per-family parity: eager reference == HF forward == ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.budgets import evit_budget, no_budget, tome_budget
from tests.tiny import BATCH, IMAGE, TINY_CONFIGS, VARIANTS, LazyModels, pixels
from vtc.exporter import families, family_of
from vtc.exporter.eager import reference_tokens, run_reference

EXPECTED = {
    # variant: (output name, tokens entering block 0, protected)
    "vit-cls": ("logits", 17, 1),
    "vit-enc": ("pooler_output", 17, 1),
    "deit-teacher": ("logits", 18, 2),
    "deit-cls": ("logits", 18, 2),
    "dinov2": ("pooler_output", 17, 1),
    "dinov2-cls": ("logits", 17, 1),
    "clip": ("pooler_output", 17, 1),
    "siglip": ("pooler_output", 16, 0),
}


@pytest.mark.parametrize("name", sorted(families()))
def test_every_family_has_tiny_configs(name: str) -> None:
    assert TINY_CONFIGS.get(name), f"registered family {name!r} has no tiny config in tests/tiny.py"


def test_every_variant_has_expectations() -> None:
    assert set(EXPECTED) == set(VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_description(tiny: LazyModels, variant: str) -> None:
    family, model = tiny.model(variant)
    out_name, tokens, protected = EXPECTED[variant]
    assert family_of(model) is family
    assert family.output_names(model) == (out_name,)
    assert family.is_classifier(model) == (out_name == "logits")
    geo = family.geometry(model, IMAGE)
    assert (geo.tokens, geo.protected, geo.width, geo.layers) == (tokens, protected, 64, 3)
    assert geo.mlp_width == 128
    assert geo.patch_flops == 16 * 3 * 8 * 8 * 64
    assert family.protected_tokens(model) == protected
    assert family.image_size(model) == IMAGE
    assert family.num_channels(model) == 3
    assert len(family.mean(model)) == len(family.std(model)) == 3
    assert len(family.blocks(model)) == 3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_matches_hf_and_onnx(tiny: LazyModels, variant: str) -> None:
    family, model = tiny.model(variant)
    x = pixels()
    budget = no_budget(family.geometry(model, IMAGE))
    ref = run_reference(family, model, x, budget)
    with torch.no_grad():
        hf = family.wrap_for_export(model)(x)
    names = family.output_names(model)
    assert list(ref) == list(names)
    for name, want in zip(names, hf, strict=True):
        assert ref[name].shape == want.shape
        torch.testing.assert_close(ref[name], want, rtol=0, atol=1e-5)

    path = tiny.onnx(variant)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == list(names)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [BATCH, 3, IMAGE, IMAGE]
    assert not list(path.parent.glob(f".{path.name}*")), "temporary file left behind"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"pixel_values": x.numpy()})
    for name, arr in zip(names, got, strict=True):
        assert np.abs(arr - ref[name].numpy()).max() <= 1e-4


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tome_reference_runs(tiny: LazyModels, variant: str) -> None:
    family, model = tiny.model(variant)
    x = pixels()
    geo = family.geometry(model, IMAGE)
    budget = tome_budget(geo, r=2)
    tokens = reference_tokens(family, model, x, budget)
    assert tokens.shape == (BATCH, geo.tokens - 6, 64)
    out = run_reference(family, model, x, budget)
    base = run_reference(family, model, x, no_budget(geo))
    for name, t in out.items():
        assert t.shape == base[name].shape
        assert torch.isfinite(t).all()
        assert not torch.allclose(t, base[name]), "ToMe had no effect"


@pytest.mark.parametrize("fuse", ["sum", "mean", "none"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_evit_reference_runs(tiny: LazyModels, variant: str, fuse: str) -> None:
    family, model = tiny.model(variant)
    geo = family.geometry(model, IMAGE)
    budget = evit_budget(geo, 0.5, [1], fuse=fuse)  # type: ignore[arg-type]
    tokens = reference_tokens(family, model, pixels(), budget)
    extra = 0 if fuse == "none" else 1
    assert tokens.shape == (BATCH, geo.protected + (geo.tokens - geo.protected) // 2 + extra, 64)
    assert tokens.shape[1] == budget.tokens_out
    for t in run_reference(family, model, pixels(), budget).values():
        assert torch.isfinite(t).all()


def test_proportional_attention_changes_result(tiny: LazyModels) -> None:
    family, model = tiny.model("vit-cls")
    geo = family.geometry(model, IMAGE)
    x = pixels()
    on = run_reference(family, model, x, tome_budget(geo, r=3, proportional_attention=True))
    off = run_reference(family, model, x, tome_budget(geo, r=3, proportional_attention=False))
    assert not torch.allclose(on["logits"], off["logits"])


def test_reference_rejects_mismatched_budget(tiny: LazyModels) -> None:
    family, model = tiny.model("vit-cls")
    geo = family.geometry(model, 48)  # 37 tokens, the model embeds 17 at 32 px
    with pytest.raises(ValueError, match="tokens"):
        run_reference(family, model, pixels(), no_budget(geo))
