"""The LLaVA checkpoint: what vtc refuses, the llava-1.5-hf weight layout, and vtc's
exportable modules against Hugging Face's own model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vtc.vlm import llava, reference
from vtc.vlm.plan import Cuts


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
    """A directory laid out as llava-hf/llava-1.5-7b-hf is: fp16 weights in two
    safetensors shards with an index, under the old names (language_model.model.*,
    language_model.lm_head, vision_tower.vision_model.*, multi_modal_projector.*), and a
    config.json with that checkpoint's keys (image_token_index, pad_token_id,
    ignore_index, torch_dtype float16, transformers 4.36, no image_seq_length). It loads
    unchanged, every tensor equal to the fp16 value."""
    model = llava.load(llava_dir)[0]
    state = {k: v.half() for k, v in model.state_dict().items()}  # current names

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
    keys = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for file, names in shards.items():
        save_file({k: renamed[k] for k in names}, str(d / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(v.numel() * 2 for v in renamed.values())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    cfg = model.config
    t, v = cfg.text_config, cfg.vision_config
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
        "image_token_index": cfg.image_token_id, "model_type": "llava",
        "pad_token_id": 0, "projector_hidden_act": "gelu",
        "text_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                        "num_hidden_layers": t.num_hidden_layers,
                        "num_attention_heads": t.num_attention_heads,
                        "num_key_value_heads": t.num_key_value_heads,
                        "max_position_embeddings": 512, "rms_norm_eps": t.rms_norm_eps,
                        "torch_dtype": "float16", "vocab_size": t.vocab_size},
        "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {"hidden_size": v.hidden_size, "image_size": v.image_size,
                          "intermediate_size": v.intermediate_size,
                          "model_type": "clip_vision_model",
                          "num_attention_heads": v.num_attention_heads,
                          "num_hidden_layers": v.num_hidden_layers,
                          "patch_size": v.patch_size, "projection_dim": 32},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
        "vocab_size": t.vocab_size}))
    loaded, geo = llava.load(d)
    got = loaded.state_dict()
    assert geo.visual == 16 and geo.feature_layer == 1 and geo.image_token_id == 319
    assert geo.kv_heads == 2 and next(loaded.parameters()).dtype == torch.float32
    for k, val in state.items():
        torch.testing.assert_close(got[k], val.float(), rtol=0, atol=0)


def test_reference_matches_hf(llava_dir: Path) -> None:
    """Uncut: the eager reference gives HF's own greedy tokens and first logits (HF
    forward + generate)."""
    model, geo = llava.load(llava_dir)
    cuts = Cuts(None, (), geo.visual, geo.visual + 12)
    g = torch.Generator().manual_seed(1)
    px = torch.randn(1, 3, geo.image_size, geo.image_size, generator=g)
    ids = [1, 5, 6, geo.image_token_id, 7, 8, 9]
    hf = reference.hf_generate(model, geo, ids, px, 8, {2})
    emb, at = reference.splice(model, ids, geo.image_token_id,
                               reference.image_embeds(model, geo, cuts, px))
    ref = reference.generate(model, geo, cuts, emb, at, 8, {2})
    assert ref.tokens == hf.tokens and len(set(hf.tokens)) > 1
    torch.testing.assert_close(ref.first_logits, hf.first_logits, rtol=0, atol=1e-4)
