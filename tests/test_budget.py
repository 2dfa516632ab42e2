"""The budget: token schedules, clipping, the FLOPs model and its errors."""

from __future__ import annotations

import pytest

from vtc.budget import (
    BudgetError,
    Geometry,
    block_flops,
    evit_budget,
    no_budget,
    solve_tome_r,
    tome_budget,
)

VIT_B = Geometry(tokens=197, protected=1, width=768, mlp_width=3072, layers=12)


def test_tome_r16_on_vit_b_matches_the_paper_schedule() -> None:
    b = tome_budget(VIT_B, r=16)
    # 197 - 16·11 = 21 enter the last block, where r is clipped to (21-1)//2 = 10.
    assert b.tokens_per_layer == [197 - 16 * i for i in range(12)]
    assert [lp.r for lp in b.layers][-1] == 10 and b.tokens_out == 11
    assert 1.95 < b.flops_ratio < 2.1  # ToMe reports ≈ 2× fewer FLOPs for r=16


def test_flops_model_by_hand() -> None:
    assert block_flops(10, 10, 4, 8) == 4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8
    b = no_budget(VIT_B)
    assert b.flops == b.flops_base and b.flops_ratio == 1.0 and b.tokens_out == 197


def test_explicit_r_list_is_literal_and_checked() -> None:
    geo = Geometry(tokens=17, protected=1, width=8, mlp_width=16, layers=3)
    assert tome_budget(geo, r=[4, 0, 2]).tokens_per_layer == [17, 13, 13]
    with pytest.raises(BudgetError, match="at most 6"):
        tome_budget(geo, r=[4, 7, 0])
    with pytest.raises(BudgetError, match="one value per block"):
        tome_budget(geo, r=[1, 2])
    with pytest.raises(BudgetError, match="at most 8"):
        tome_budget(geo, r=9)  # impossible already at block 0


def test_flops_ratio_solver_reaches_the_target_with_the_smallest_r() -> None:
    r = solve_tome_r(VIT_B, 2.0)
    assert tome_budget(VIT_B, r=r).flops_ratio >= 2.0
    assert tome_budget(VIT_B, r=r - 1).flops_ratio < 2.0
    assert tome_budget(VIT_B, flops_ratio=2.0).layers[0].r == r
    with pytest.raises(BudgetError, match="cannot be reached"):
        solve_tome_r(VIT_B, 50.0)


def test_evit_schedule_and_errors() -> None:
    b = evit_budget(VIT_B, 0.7, [3, 6, 9])
    # ceil(0.7·196) = 138 kept + CLS + fused token = 140, and so on.
    assert b.tokens_per_layer[4] == 140 and b.layers[3].keep == 138
    assert b.tokens_out == b.layers[9].tokens_out < 140
    with pytest.raises(BudgetError, match="outside"):
        evit_budget(VIT_B, 1.5, [3])
    with pytest.raises(BudgetError, match="outside"):
        evit_budget(VIT_B, 0.0, [3])
    with pytest.raises(BudgetError, match="0-based"):
        evit_budget(VIT_B, 0.7, [12])


def test_evit_absolute_keep() -> None:
    b = evit_budget(VIT_B, None, [0, 1], keep=100)
    assert b.tokens_per_layer[1] == 102 and b.tokens_out == 102
    with pytest.raises(BudgetError, match="only 196 unprotected"):
        evit_budget(VIT_B, None, [0, 1], keep=197)
    with pytest.raises(BudgetError, match="exactly one"):
        evit_budget(VIT_B, 0.7, [0], keep=10)
