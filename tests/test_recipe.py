"""Recipes: shipped ones load, unknown keys and bad values are named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtc.budget import BudgetError, Geometry
from vtc.recipe import RecipeError, load_recipe, shipped

GEO = Geometry(tokens=197, protected=1, width=768, mlp_width=3072, layers=12)


def test_shipped_recipes_load_and_resolve() -> None:
    assert {"tome-r8", "tome-r16", "evit-keep70"} <= set(shipped())
    assert load_recipe("tome-r16").budget(GEO).layers[0].params["r"] == 16
    assert load_recipe("tome-r8").budget(GEO).layers[0].params["r"] == 8
    for r in (8, 16):  # PiToMe ships at ToMe's budgets, so the two compare at equal FLOPs
        pit = load_recipe(f"pitome-r{r}").budget(GEO)
        tome = load_recipe(f"tome-r{r}").budget(GEO)
        assert pit.tokens_per_layer == tome.tokens_per_layer and pit.methods == ("pitome",)
    ev = load_recipe("evit-keep70")
    evit = ev.section("evit")
    assert evit.keep_rate == 0.7 and evit.layers is None and evit.at_depth == [0.25, 0.5, 0.75]
    assert [lp.index for lp in ev.budget(GEO).reducing_layers] == [3, 6, 9]


def test_set_overrides_a_field() -> None:
    rec = load_recipe("tome-r16", ["tome.r=4", "gates.min_speedup=1.2", "validate.repeats=3"])
    assert rec.section("tome").r == 4 and rec.gates["min_speedup"] == 1.2
    assert rec.validate_.repeats == 3
    # a task gate's name holds a dot: it stays one key
    rec = load_recipe("tome-r16", ["validate.task=pkg.mod:fn", "gates.min_task.exact_match=0.9"])
    assert rec.gates["min_task.exact_match"] == 0.9
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe("tome-r16", ["tome.r"])


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nmethod: tome\ntome:\n  r: 4\n  ratio: 2\n")
    with pytest.raises(RecipeError, match=r"unknown key 'tome\.ratio'"):
        load_recipe(str(p))
    with pytest.raises(RecipeError, match=r"unknown key 'tome\.rr'"):
        load_recipe("tome-r16", ["tome.rr=3"])


def test_bad_values(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="keep_rate"):
        load_recipe("evit-keep70", ["evit.keep_rate=1.5"])
    with pytest.raises(RecipeError, match="method"):
        load_recipe("tome-r16", ["method=prune"])
    with pytest.raises(BudgetError, match="impossible"):
        load_recipe("tome-r16", ["tome.r=120"]).budget(GEO)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(p))


def test_unknown_gate_is_an_early_error() -> None:
    with pytest.raises(RecipeError, match="unknown gate"):
        load_recipe("tome-r16", ["gates.min_speed=2"])


def _geo(layers: int) -> Geometry:
    return Geometry(tokens=197, protected=1, width=64, mlp_width=256, layers=layers)


@pytest.mark.parametrize(("depth", "blocks"), [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]),
                                               (6, [1, 3, 4]), (12, [3, 6, 9]),
                                               (24, [6, 12, 18])])
def test_evit_keep70_scales_to_the_models_depth(depth: int, blocks: list[int]) -> None:
    """The shipped blocks are fractions of the depth, resolved at plan time; the report's
    budget settings record the blocks they gave (12 blocks: the paper's 3, 6, 9)."""
    budget = load_recipe("evit-keep70").budget(_geo(depth))
    assert [lp.index for lp in budget.layers if lp.method == "evit"] == blocks
    assert budget.settings["evit"]["layers"] == blocks
    assert budget.settings["evit"]["at_depth"] == [0.25, 0.5, 0.75]


def test_evit_layers_given_replace_the_depth_fractions() -> None:
    rec = load_recipe("evit-keep70", ["evit.layers=[0,2]"])
    assert rec.section("evit").layers == [0, 2] and rec.section("evit").at_depth is None
    budget = rec.budget(_geo(3))
    assert [lp.index for lp in budget.layers if lp.method == "evit"] == [0, 2]
    every = load_recipe("evit-keep70", ["evit.layers=null"]).budget(_geo(3))
    assert [lp.method for lp in every.layers] == ["evit"] * 3  # null: every block
    with pytest.raises(RecipeError, match=r"at_depth.*in \[0, 1\)"):
        load_recipe("evit-keep70", ["evit.at_depth=[0.5, 1.0]"])
    with pytest.raises(RecipeError, match="not both"):
        load_recipe("evit-keep70", ["evit.at_depth=[0.5]", "evit.layers=[1]"])


def test_every_encoder_recipe_gates_speed_and_a_fidelity_floor_per_output_kind() -> None:
    from vtc.report import FIDELITY_SCOPE

    for name in sorted(shipped()):
        rec = load_recipe(name)
        if list(rec.cuts()):  # a vision-language recipe: its gates are VLM_GATES
            continue
        assert set(FIDELITY_SCOPE) <= set(rec.gates), name
        if rec.method:  # a reduction: it must pay off
            assert rec.gates["min_speedup"] >= 1.0, name
        else:
            assert "min_speedup" not in rec.gates  # none: nothing to pay off


def test_an_exponent_without_a_dot_is_a_number() -> None:
    """PyYAML's YAML 1.1 reads `1e-4` as text; --set and recipe files read it as a number
    (a gate limit written that way was refused as text)."""
    r = load_recipe("tome-r8", ["gates.max_text_parity_diff=1e-4", "tome.r=2"])
    assert r.gates["max_text_parity_diff"] == pytest.approx(1e-4)
    with pytest.raises(RecipeError, match="is text"):
        load_recipe("tome-r8", ['gates.max_text_parity_diff="1e-4"'])
