"""The budget: token schedules, clipping, the FLOPs model, chains of methods and their
errors (budgets built through the method registry, as recipes build them)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.budgets import budget, evit_budget, no_budget, pitome_budget, tome_budget
from vtc.budget import (
    COMPACT,
    ENGINE_COSTS,
    GATHER,
    BudgetError,
    Geometry,
    Pricing,
    SiteCost,
    block_flops,
    choose,
)
from vtc.methods import plan_budget
from vtc.recipe import RecipeError, load_recipe

VIT_B = Geometry(tokens=197, protected=1, width=768, mlp_width=3072, layers=12, heads=12)
SMALL = Geometry(tokens=17, protected=1, width=8, mlp_width=16, layers=3)


def test_tome_r16_on_vit_b_matches_the_paper_schedule() -> None:
    b = tome_budget(VIT_B, r=16)
    # 197 - 16·11 = 21 enter the last block, where r is clipped to (21-1)//2 = 10.
    assert b.tokens_per_layer == [197 - 16 * i for i in range(12)]
    assert b.layers[-1].params["r"] == 10 and b.tokens_out == 11
    assert 1.95 < b.flops_ratio < 2.1  # ToMe reports ≈ 2× fewer FLOPs for r=16
    assert b.methods == ("tome",) and all(lp.method == "tome" for lp in b.layers)
    # proportional attention from the block after the first merge on
    assert [lp.attn_bias for lp in b.layers] == [False] + [True] * 11
    assert b.flops_overhead > 0  # the matching's own MACs, reported beside the ratio


def test_flops_model_by_hand() -> None:
    assert block_flops(10, 10, 4, 8) == 4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8
    b = no_budget(VIT_B)
    assert b.flops == b.flops_base and b.flops_ratio == 1.0 and b.tokens_out == 197
    assert budget(VIT_B).to_dict()["layers"][0] == {
        "index": 0, "tokens_in": 197, "tokens_out": 197, "method": "none", "params": {},
        "attn_bias": False, "formulation": ""}


def test_explicit_r_list_is_literal_and_checked() -> None:
    assert tome_budget(SMALL, r=[4, 0, 2]).tokens_per_layer == [17, 13, 13]
    with pytest.raises(BudgetError, match="at most 6"):
        tome_budget(SMALL, r=[4, 7, 0])
    with pytest.raises(BudgetError, match="one value per block"):
        tome_budget(SMALL, r=[1, 2])
    with pytest.raises(BudgetError, match="at most 8"):
        tome_budget(SMALL, r=9)  # impossible already at block 0


def test_flops_ratio_solver_reaches_the_target_with_the_smallest_r() -> None:
    b = tome_budget(VIT_B, flops_ratio=2.0)
    r = b.layers[0].params["r"]
    assert b.flops_ratio >= 2.0 and tome_budget(VIT_B, r=r - 1).flops_ratio < 2.0
    assert b.settings["tome"]["r"] == r and b.settings["tome"]["flops_ratio"] is None
    with pytest.raises(BudgetError, match="cannot be reached"):
        tome_budget(VIT_B, flops_ratio=50.0)


def test_tome_split_is_recorded_per_block() -> None:
    inside, outside = tome_budget(VIT_B, r=8), tome_budget(VIT_B, r=8, protected="outside")
    assert inside.layers[0].params == {"r": 8, "first": 1, "protected": "inside"}
    assert outside.layers[0].params["first"] == 0
    deit = Geometry(tokens=198, protected=2, width=768, mlp_width=3072, layers=12)
    assert tome_budget(deit, r=8).layers[0].params["first"] == 0  # P even: same split


def test_pitome_margin_schedule_and_limits() -> None:
    b = pitome_budget(VIT_B, r=16)
    margins = [lp.params["margin"] for lp in b.layers]
    assert margins == pytest.approx([0.9 * (1 - i / 12) for i in range(12)])
    assert b.tokens_per_layer == tome_budget(VIT_B, r=16).tokens_per_layer  # same r, same FLOPs
    assert pitome_budget(VIT_B, r=8, margin=0.5).layers[3].params["margin"] == pytest.approx(
        0.5 * 0.75)
    with pytest.raises(ValidationError, match=r"outside \[-1, 1\)"):
        pitome_budget(VIT_B, r=8, margin=1.5)
    with pytest.raises(ValidationError, match="outside"):
        pitome_budget(VIT_B, r=8, alpha=float("nan"))


def test_evit_schedule_and_errors() -> None:
    b = evit_budget(VIT_B, 0.7, [3, 6, 9])
    # ceil(0.7·196) = 138 kept + CLS + fused token = 140, and so on.
    assert b.tokens_per_layer[4] == 140 and b.layers[3].params == {"keep": 138, "fuse": "sum",
                                                                "score": "cls"}
    assert b.tokens_out == b.layers[9].tokens_out < 140
    assert not any(lp.attn_bias for lp in b.layers)  # no sizes, no proportional attention
    with pytest.raises(ValidationError, match="outside"):
        evit_budget(VIT_B, 1.5, [3])
    with pytest.raises(ValidationError, match="outside"):
        evit_budget(VIT_B, 0.0, [3])
    with pytest.raises(BudgetError, match="0-based"):
        evit_budget(VIT_B, 0.7, [12])


def test_evit_absolute_keep() -> None:
    b = evit_budget(VIT_B, None, [0, 1], keep=100)
    assert b.tokens_per_layer[1] == 102 and b.tokens_out == 102
    with pytest.raises(BudgetError, match="only 196 unprotected"):
        evit_budget(VIT_B, None, [0, 1], keep=197)
    with pytest.raises(ValidationError, match="exactly one"):
        evit_budget(VIT_B, 0.7, [0], keep=10)


def test_a_chain_acts_in_disjoint_blocks_in_order() -> None:
    b = budget(VIT_B, ("tome", {"r": 8, "layers": [0, 1, 2, 3, 4, 5]}),
               ("evit", {"keep_rate": 0.5, "layers": [8]}))
    assert b.methods == ("tome", "evit")
    assert [lp.method for lp in b.layers] == ["tome"] * 6 + ["none"] * 2 + ["evit"] + [
        "none"] * 3
    assert b.layers[8].tokens_in == 197 - 48
    cand = 197 - 48 - 1
    assert b.layers[8].params["keep"] == -(-cand // 2) and b.tokens_out == 1 + cand // 2 + 1
    assert all(lp.attn_bias for lp in b.layers[1:])  # sizes exist after the first merge
    assert b.settings["evit"]["layers"] == [8]


def test_a_chain_with_a_constant_r_is_clipped_from_its_own_first_block() -> None:
    b = budget(SMALL, ("evit", {"keep_rate": None, "keep": 6, "layers": [0]}),
               ("tome", {"r": 3, "layers": [1, 2]}))
    # 1 + 6 + 1 fused enter block 1 (r = 3); 5 enter block 2, where r is clipped to 2
    assert b.tokens_per_layer == [17, 8, 5] and b.tokens_out == 3
    with pytest.raises(BudgetError, match=r"tome\.r=3 at block 1 is impossible"):
        budget(SMALL, ("evit", {"keep_rate": None, "keep": 4, "fuse": "none", "layers": [0]}),
               ("tome", {"r": 3, "layers": [1, 2]}))


def test_overlapping_blocks_are_refused_with_the_fix() -> None:
    with pytest.raises(BudgetError, match=r"tome and evit both act in blocks \[3, 6, 9\]"):
        budget(VIT_B, ("tome", {"r": 8}), ("evit", {"keep_rate": 0.7}))
    with pytest.raises(BudgetError, match=r"both act in blocks \[1\]"):
        budget(SMALL, ("tome", {"r": 2, "layers": [0, 1]}), ("pitome", {"r": 2, "layers": [1]}))


def test_layers_in_a_section_are_checked() -> None:
    with pytest.raises(ValidationError, match="negative"):
        tome_budget(SMALL, r=2, layers=[-1])
    with pytest.raises(ValidationError, match="twice"):
        tome_budget(SMALL, r=2, layers=[1, 1])
    with pytest.raises(BudgetError, match=r"one value per block or a single integer"):
        tome_budget(SMALL, r=[2, 2, 2], layers=[0, 1])


def test_evit_cls_score_needs_a_protected_token() -> None:
    no_cls = Geometry(tokens=16, protected=0, width=64, mlp_width=128, layers=3)
    with pytest.raises(BudgetError, match=r"no CLS .* set evit.score=mean"):
        evit_budget(no_cls, 0.5, [0], score="cls")
    b = evit_budget(no_cls, 0.5, [0], score="mean")
    assert b.scores == {"evit": "mean"} and b.layers[0].params["score"] == "mean"
    assert evit_budget(VIT_B, 0.7, [3]).scores == {"evit": "cls"}
    assert tome_budget(VIT_B, r=8).scores == {}  # not attention-ranked: nothing recorded


# ---- the cost model of a site's formulation (vtc.budget.choose) -------------------------

ENCODER_1024 = Geometry(tokens=1024, protected=0, width=256, mlp_width=1024, layers=12, heads=8)


def _sites(geo: Geometry, recipe: str, pricing: Pricing, *sets: str) -> list[str]:
    rec = load_recipe(recipe, list(sets))
    return [sp.formulation for sp in plan_budget(geo, rec.sections(), pricing).sites]


def test_the_cost_model_picks_gathers_on_long_sequences_and_compact_on_short_ones() -> None:
    """On the ORT CPU EP at batch 8: the 1,024-token encoder's merges (N'·N·C MACs of an
    assignment matrix against a few dozen node launches) are gathers in every block;
    ViT-B/16 tome-r16 gathers while many tokens are left and turns compact in its last
    blocks (37 and 21 tokens). On a GPU engine, where a launch costs as much as millions
    of MACs, the same ViT-B sites are compact."""
    ort8 = Pricing("ort", 8)
    long = _sites(ENCODER_1024, "tome-r8", ort8, "tome.r=null", "tome.flops_ratio=2.0")
    assert long == [GATHER] * 12
    vit_b = _sites(VIT_B, "tome-r16", ort8)
    assert vit_b[0] == GATHER and vit_b[-1] == COMPACT
    assert vit_b == sorted(vit_b, key=lambda f: f == COMPACT)  # one switch, as N shrinks
    assert _sites(VIT_B, "tome-r16", Pricing("tensorrt", 8)) == [COMPACT] * 12
    # the choice is the cheaper modelled time, figures recorded per site
    b = plan_budget(VIT_B, load_recipe("tome-r16").sections(), ort8)
    first, last = b.sites[0], b.sites[-1]
    assert first.seconds(GATHER) < first.seconds(COMPACT)
    assert last.seconds(COMPACT) < last.seconds(GATHER)
    assert first.costs[COMPACT].macs > 10 * first.costs[GATHER].macs
    assert first.costs[COMPACT].nodes < first.costs[GATHER].nodes
    assert [lp.formulation for lp in b.reducing_layers] == [sp.formulation for sp in b.sites]


def test_choose_weighs_launches_against_work_per_engine() -> None:
    many_nodes, many_macs = SiteCost(10_000, 1_000, 40), SiteCost(5_000_000, 1_000, 20)
    costs = {GATHER: many_nodes, COMPACT: many_macs}
    assert choose(costs, Pricing("ort", 8)) == GATHER  # CPU: MACs dear, launches cheap
    assert choose(costs, Pricing("tensorrt", 1)) == COMPACT  # GPU: launches dear
    for name, eng in ENGINE_COSTS.items():  # every price is stated, with its source
        assert eng.launch_us > 0 and eng.macs_per_us > 0 and eng.elements_per_us > 0, name
        assert eng.source


def test_a_recipe_forces_a_formulation() -> None:
    b = load_recipe("tome-r16", ["tome.formulation=compact"]).budget(VIT_B, 8)
    assert {sp.formulation for sp in b.sites} == {COMPACT}
    assert {sp.chosen_by for sp in b.sites} == {"recipe"}
    assert {sp.chosen_by for sp in load_recipe("tome-r16").budget(VIT_B).sites} == {"cost"}
    ev = load_recipe("evit-keep70", ["evit.formulation=gather"]).budget(VIT_B, 8)
    assert [sp.formulation for sp in ev.sites] == [GATHER] * 3
    with pytest.raises(RecipeError, match="formulation"):
        load_recipe("tome-r16", ["tome.formulation=sparse"])
    # the engine named by the recipe prices the sites
    assert load_recipe("tome-r16", ["backend.kind=openvino"]).pricing(4) == Pricing("openvino", 4)
