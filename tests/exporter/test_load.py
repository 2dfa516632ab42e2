"""Loading HF checkpoint directories: safetensors, pickles, towers, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    ViTModel,
)

from tests.tiny import IMAGE, build_variant, perturb, pixels
from vtc.errors import InputError
from vtc.exporter import (
    PickleRefusedError,
    UnsupportedModelError,
    get_family,
    load_model,
)

_VISION: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=IMAGE,
    patch_size=8,
)
_TEXT: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=100,
    max_position_embeddings=16,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)


def _same_outputs(a: Any, b: Any) -> None:
    fa, fb = get_family(a.config.model_type), get_family(b.config.model_type)
    x = pixels()
    with torch.no_grad():
        for ta, tb in zip(fa.wrap_for_export(a)(x), fb.wrap_for_export(b)(x), strict=True):
            torch.testing.assert_close(ta, tb, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["vit-cls", "deit-teacher", "dinov2", "clip", "siglip"])
def test_safetensors_round_trip(tmp_path: Path, variant: str) -> None:
    family, model = build_variant(variant)
    model.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    loaded_family, loaded = load_model(tmp_path)
    assert loaded_family is family
    assert type(loaded) is type(model)
    assert not loaded.training
    assert getattr(loaded.config, "_attn_implementation", None) == "sdpa"
    _same_outputs(model, loaded)


def test_pickle_refused_unless_allowed(tmp_path: Path) -> None:
    family, model = build_variant("vit-cls")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError, match="--allow-pickle"):
        load_model(tmp_path)
    with pytest.raises(PickleRefusedError):
        family.load(tmp_path)
    _, loaded = load_model(tmp_path, allow_pickle=True)
    _same_outputs(model, loaded)


def test_missing_weights_file(tmp_path: Path) -> None:
    _, model = build_variant("vit-cls")
    model.config.save_pretrained(tmp_path)
    with pytest.raises(InputError, match="safetensors"):
        load_model(tmp_path)


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(UnsupportedModelError, match="swin") as err:
        load_model(tmp_path)
    for supported in ("vit", "deit", "dinov2", "clip", "clip_vision_model", "siglip"):
        assert supported in str(err.value)
    with pytest.raises(UnsupportedModelError, match="supported model types"):
        get_family("bogus")
    assert isinstance(err.value, ValueError)


def test_no_config(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"config\.json"):
        load_model(tmp_path)


def test_full_clip_checkpoint_loads_projected_vision_tower(tmp_path: Path) -> None:
    """A full CLIPModel checkpoint gives the vision tower with its projection (output
    image_embeds, what an image–text user compares with text_embeds) and keeps the full
    model for the text tower; a vision-only checkpoint keeps pooler_output."""
    torch.manual_seed(0)
    full: Any = perturb(CLIPModel(CLIPConfig(vision_config=_VISION, text_config=_TEXT,
                                             projection_dim=24)).eval())
    full.save_pretrained(tmp_path)
    family, tower = load_model(tmp_path)
    assert family.name == "clip"
    assert type(tower).__name__ == "CLIPVisionModelWithProjection"
    assert family.output_names(tower) == ("image_embeds",)
    assert family.image_text(tower) is not None
    x = pixels()
    with torch.no_grad():
        want = full.visual_projection(full.vision_model(pixel_values=x).pooler_output)
        (got,) = family.wrap_for_export(tower)(x)
    assert got.shape == (x.shape[0], 24)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the tower's parameters are the vision half's only (the text tower is not exported
    # into the vision graph)
    names = {n for n, _ in tower.named_parameters()}
    assert names and not any(n.startswith("text") for n in names)
    built = family.build(full.config)
    assert type(built).__name__ == "CLIPVisionModelWithProjection"
    # the vision tower alone keeps today's output
    vision_only, _ = build_variant("clip")
    assert family.output_names(vision_only) == ("pooler_output",)
    assert family.image_text(vision_only) is None


def test_full_siglip_checkpoint_loads_vision_tower(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full: Any = perturb(SiglipModel(SiglipConfig(vision_config=_VISION, text_config=_TEXT)).eval())
    full.save_pretrained(tmp_path)
    family, tower = load_model(tmp_path)
    assert family.name == "siglip"
    assert type(tower).__name__ == "SiglipVisionModel"
    assert family.protected_tokens(tower) == 0
    _same_outputs(full.vision_model, tower)


def test_siglip_without_head_is_unsupported() -> None:
    cfg = SiglipVisionConfig(**_VISION, vision_use_head=False)
    with pytest.raises(UnsupportedModelError, match="vision_use_head"):
        get_family("siglip_vision_model").build(cfg)


def test_vit_encoder_without_pooler(tmp_path: Path) -> None:
    family, with_pooler = build_variant("vit-enc")
    torch.manual_seed(0)
    bare = perturb(ViTModel(with_pooler.config, add_pooling_layer=False).eval())
    bare.save_pretrained(tmp_path)
    _, loaded = load_model(tmp_path)
    assert loaded.pooler is None
    x = pixels()
    with torch.no_grad():
        (pooled,) = family.wrap_for_export(loaded)(x)
        want = bare(pixel_values=x).last_hidden_state[:, 0]
    torch.testing.assert_close(pooled, want, rtol=0, atol=0)
    assert family.geometry(loaded, IMAGE).head_flops == 0


def test_preprocessor_config_sets_mean_std(tmp_path: Path) -> None:
    family, model = build_variant("vit-cls")
    assert family.mean(model) == pytest.approx((0.485, 0.456, 0.406))
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    _, loaded = load_model(tmp_path)
    assert family.mean(loaded) == (0.5, 0.5, 0.5)
    assert family.std(loaded) == (0.25, 0.25, 0.25)


def test_family_default_normalisation() -> None:
    for variant, mean in [("clip", 0.48145466), ("siglip", 0.5), ("dinov2", 0.485)]:
        family, model = build_variant(variant)
        assert family.mean(model)[0] == pytest.approx(mean)
