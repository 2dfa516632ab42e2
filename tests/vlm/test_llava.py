"""The LLaVA checkpoint: what vtc refuses, the llava-1.5-hf weight layout, and vtc's
exportable modules against Hugging Face's own model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vtc.vlm import llava, modules, reference


@pytest.mark.parametrize(("edit", "message"), [
    ({"vision_feature_layer": [-2, -1]}, "several layers"),
    ({"vision_feature_select_strategy": "cls_only"}, "select_strategy 'cls_only'"),
    ({"vision_feature_layer": -9}, "outside the tower"),
])
def test_unsupported_settings_are_named(edit: dict, message: str, llava_dir: Path,
                                        tmp_path: Path) -> None:
    cfg = json.loads((llava_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | edit))
    with pytest.raises(llava.UnsupportedCheckpoint, match=message):
        llava.load(tmp_path)


def test_llava15_hf_layout_loads_unchanged(llava_dir: Path, tmp_path: Path) -> None:
    """Weights renamed to the llava-hf/llava-1.5-7b-hf names (language_model.model.*,
    language_model.lm_head, vision_tower.vision_model.*) load onto the same tensors."""
    state = llava.load(llava_dir)[0].state_dict()  # transformers' current names

    def old(name: str) -> str:
        if name.startswith("model.language_model."):
            return "language_model.model." + name[len("model.language_model."):]
        if name == "lm_head.weight":
            return "language_model.lm_head.weight"
        if name.startswith("model.vision_tower."):
            return "vision_tower.vision_model." + name[len("model.vision_tower."):]
        return name[len("model."):] if name.startswith("model.") else name

    renamed = {old(k): v.contiguous() for k, v in state.items()}
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in renamed
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in renamed
    assert "multi_modal_projector.linear_1.weight" in renamed
    d = tmp_path / "llava-1.5-layout"
    d.mkdir()
    save_file(renamed, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((llava_dir / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg))
    model, geo = llava.load(d)
    got = model.state_dict()
    assert geo.visual == 16 and geo.feature_layer == 1
    for k, v in state.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_modules_and_reference_match_hf(llava_dir: Path) -> None:
    """Uncut: vtc's prefill + decode modules and the eager reference give HF's own
    greedy tokens and first logits (HF forward + generate)."""
    model, geo = llava.load(llava_dir)
    cuts = modules.Cuts(None, None, None, geo.visual, geo.visual + 12)
    g = torch.Generator().manual_seed(1)
    px = torch.randn(1, 3, geo.image_size, geo.image_size, generator=g)
    ids = [1, 5, 6, geo.image_token_id, 7, 8, 9]
    hf = reference.hf_generate(model, geo, ids, px, 8, {2})
    emb, at = reference.splice(model, ids, geo.image_token_id,
                               reference.image_embeds(model, geo, cuts, px))
    ref = reference.generate(model, geo, cuts, emb, at, 8, {2})
    assert ref.tokens == hf.tokens and len(set(hf.tokens)) > 1
    torch.testing.assert_close(ref.first_logits, hf.first_logits, rtol=0, atol=1e-4)
    # vtc's own prefill module, left-padded
    s, p = emb.shape[1], cuts.prefill
    pad = p - s
    padded = torch.cat([torch.zeros(1, pad, emb.shape[2]), emb], dim=1)
    mask = torch.tensor([[0] * pad + [1] * s])
    pos = torch.tensor([[0] * pad + list(range(s))])
    with torch.no_grad():
        out = modules.Prefill(model, geo, cuts)(padded, mask, pos)
    torch.testing.assert_close(out[0][0], hf.first_logits, rtol=0, atol=1e-4)
    assert [t.shape[2] for t in out[1::2]] == [p] * geo.lm_layers
