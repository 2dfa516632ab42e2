"""The two VLM cuts against independent implementations of the authors' code, and their
static schedules' refusals."""

from __future__ import annotations

import pytest
import torch

from tests.reference import visionzip_reference
from vtc.budget import BudgetError
from vtc.methods import get
from vtc.methods.cut import cls_score
from vtc.methods.fastv import FastVConfig, keep_indices
from vtc.methods.visionzip import VisionZipConfig, select


def visionzip_as_published(feats: torch.Tensor, attn: torch.Tensor, metric: torch.Tensor,
                           dominant: int, contextual: int) -> torch.Tensor:
    """VisionZip's feature selection written as the reference code does it (boolean
    masks, masked_select, scatter of a one-hot assignment, isin) — not vtc's op."""
    b, t, _ = feats.shape
    cls_att = attn.sum(dim=1)[:, 0, 1:]
    idx = torch.topk(cls_att, dominant - 1, dim=-1).indices + 1
    idx = torch.cat([torch.zeros(b, 1, dtype=torch.long), idx], dim=1)
    keep = torch.zeros(b, t, dtype=torch.bool).scatter_(1, idx, True)
    return visionzip_reference.merge(feats, metric, keep, dominant, contextual)[0]


@pytest.mark.parametrize(("t", "dominant", "contextual"),
                         [(17, 6, 3), (17, 1, 4), (50, 20, 0), (577, 54, 10), (17, 12, 5)])
def test_visionzip_matches_the_published_code(t: int, dominant: int, contextual: int) -> None:
    g = torch.Generator().manual_seed(t + dominant)
    feats = torch.randn(2, t, 8, generator=g)
    attn = torch.randn(2, 4, t, t, generator=g).softmax(-1)
    keys = torch.randn(2, t, 6, generator=g)
    ours, _idx = select(feats, cls_score(attn), keys, dominant, contextual)
    assert ours.shape == (2, dominant + contextual, 8)
    if contextual == 0:
        ref = visionzip_as_published(feats, attn, keys, dominant, 1)[:, :dominant]
    else:
        ref = visionzip_as_published(feats, attn, keys, dominant, contextual)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_visionzip_keeps_cls_and_the_original_order() -> None:
    t = 9
    feats = torch.arange(t, dtype=torch.float32)[None, :, None].expand(1, t, 2).clone()
    attn = torch.zeros(1, 1, t, t)
    attn[0, 0, 0, [7, 2, 5]] = torch.tensor([0.5, 0.3, 0.2])  # CLS attends 7 > 2 > 5
    out, idx = select(feats, cls_score(attn), torch.randn(1, t, 3), dominant=4, contextual=0)
    assert idx[0].tolist() == [0, 2, 5, 7]
    assert out[0, :, 0].tolist() == [0.0, 2.0, 5.0, 7.0]


def fastv_as_published(row: torch.Tensor, start: int, visual: int, keep: int) -> torch.Tensor:
    """FastV's inplace Llama forward: system tokens, the top `keep` image tokens by the
    last token's head-averaged attention, then every later token, sorted."""
    s = row.shape[-1]
    top = row[start:start + visual].topk(keep).indices + start
    idx = torch.cat([torch.arange(start), top, torch.arange(start + visual, s)])
    return idx.sort().values


@pytest.mark.parametrize(("s", "start", "visual", "keep"),
                         [(40, 5, 16, 8), (40, 0, 16, 1), (33, 10, 9, 9), (700, 5, 576, 288)])
def test_fastv_matches_the_published_code(s: int, start: int, visual: int, keep: int) -> None:
    row = torch.rand(1, s, generator=torch.Generator().manual_seed(s + keep)).softmax(-1)
    pos = torch.arange(s)[None]
    vis = (pos >= start) & (pos < start + visual)
    ours = keep_indices(row, vis, visual, keep)
    assert ours[0].tolist() == fastv_as_published(row[0], start, visual, keep).tolist()


def test_schedules_refuse_what_does_not_fit() -> None:
    vz, fv = get("visionzip"), get("fastv")
    assert vz.tokens_after(VisionZipConfig(dominant=54, contextual=10), 577) == 64
    with pytest.raises(BudgetError, match="dominant is 600"):
        vz.tokens_after(VisionZipConfig(dominant=600, contextual=10), 577)
    with pytest.raises(BudgetError, match="contextual is 600"):
        vz.tokens_after(VisionZipConfig(dominant=54, contextual=600), 577)
    assert fv.tokens_after(FastVConfig(layer=2, keep=0.5), 576) == 288
    with pytest.raises(BudgetError, match="tokens is 700"):
        fv.tokens_after(FastVConfig(layer=2, keep=None, tokens=700), 576)
    with pytest.raises(BudgetError, match="has 32 layers"):
        fv.check_layer(FastVConfig(layer=32), 32)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="L ≥ 1"):
        FastVConfig(layer=0)


def test_vlm_schema_is_current() -> None:
    import json

    from vtc.report_vlm import SCHEMA_PATH, json_schema

    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(json.dumps(json_schema())), (
        "vtc/vlm.schema.json is stale: run python -m vtc.report_vlm")


def test_cut_sections_take_no_encoder_layers() -> None:
    from vtc.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="takes no layers"):
        load_recipe("llava-fastv", ["fastv.layers=[1]"])


def test_vlm_gates_share_the_gate_rules() -> None:
    """VLM gates judge like encoder gates: pass/fail by kind, NaN fails, a missing cost
    tier (--no-bench) skips the cost gate."""
    import math
    from types import SimpleNamespace

    from vtc.stages.vlm import judge

    gen = SimpleNamespace(tokens_equal=1.0, first_logits_max_abs_diff=math.nan)
    rep = SimpleNamespace(parity=SimpleNamespace(generation=gen), cost=None)
    judge(rep, {"min_tokens_equal": 1.0, "max_generation_logits_diff": 1e-3,  # type: ignore[arg-type]
                "max_prefill_ratio": 0.25})
    by = {g.name: g for g in rep.gates}
    assert by["min_tokens_equal"].passed and not by["max_generation_logits_diff"].passed
    assert by["max_generation_logits_diff"].note == "value is NaN"
    assert rep.gates_skipped == ["max_prefill_ratio"] and rep.passed is False


def _geo(lm_layers: int = 32) -> object:
    from vtc.vlm.llava import VlmGeometry

    # LLaVA-1.5-7B's shapes: CLIP ViT-L/14 at 336 px (577 tokens), feature layer -2
    return VlmGeometry(image_size=336, patch=14, tower_tokens=577, tower_layers=24,
                       feature_layer=22, strategy="default", vision_width=1024,
                       vision_heads=16, vision_mlp=4096, lm_width=4096, lm_layers=lm_layers,
                       lm_heads=32, kv_heads=32, head_dim=128, mlp_width=11008, vocab=32000,
                       image_token_id=32000)


def test_plan_chains_the_cuts_by_their_sites_without_naming_them() -> None:
    """VisionZip (projector) then FastV (LM) from one recipe: each step as its method
    plans it, FastV's R taken from what VisionZip left, the layer tokens from the steps."""
    from vtc.recipe import load_recipe
    from vtc.vlm import plan

    recipe = load_recipe("llava-tome-visionzip-fastv", [])
    geo = _geo()
    cuts = plan.plan(recipe, geo)  # type: ignore[arg-type]
    proj, fastv = cuts.steps
    assert (proj.method, proj.site, fastv.method, fastv.site) == (
        "visionzip", "projector", "fastv", "lm")
    assert proj.tokens_in == cuts.encoder.tokens_out  # type: ignore[union-attr]
    assert fastv.tokens_in == proj.tokens_out == cuts.visual
    assert fastv.tokens_out == get("fastv").tokens_after(  # type: ignore[attr-defined]
        recipe.fastv, cuts.visual)
    per_layer = plan.layer_tokens(geo, cuts)  # type: ignore[arg-type]
    layer = fastv.layer
    assert per_layer[:layer] == [cuts.prefill] * layer
    assert per_layer[layer:] == [cuts.prefill - fastv.dropped] * (32 - layer)
    assert cuts.lm_tokens == per_layer[-1]


def test_plan_refuses_a_cut_past_the_last_lm_layer() -> None:
    from vtc.recipe import load_recipe
    from vtc.vlm import plan

    with pytest.raises(BudgetError, match="has 3 layers"):
        plan.plan(load_recipe("llava-fastv", ["fastv.layer=3"]), _geo(3))  # type: ignore[arg-type]
