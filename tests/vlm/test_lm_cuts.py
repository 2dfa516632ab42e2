"""The LM cuts as one graph pass on the builder's decoder (`vtc.passes.decoder_cuts`):
PyramidDrop's stages, the visual-token exit and their compositions against vtc's eager
reference (HF's layers with the same selections), PyramidDrop against an independent
implementation of the authors' code (tests/reference/pdrop_reference.py), and the
schedules' bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reference.pdrop_reference import pdrop_greedy, pdrop_logits
from vtc.budget import BudgetError
from vtc.recipe import RecipeError, from_dict
from vtc.vlm import decoder, plan, reference

from .conftest import prompt_embeds, run_decoder

SMALL = {"generate": {"prompt_tokens": 24}}


def _cuts(geo: Any, **sections: Any) -> Any:
    recipe = from_dict({"name": "t", "method": list(sections), **sections, **SMALL}, "test")
    return plan.plan(recipe, geo)


CASES = {
    "pyramid 1/2/3, λ 0.5": {"pyramid": {"stages": [1, 2, 3], "keep": 0.5}},
    "pyramid 2/3, listed": {"pyramid": {"stages": [2, 3], "keep": [0.75, 0.25]}},
    "pyramid keeps none": {"pyramid": {"stages": [2], "keep": [0.05]}},
    "exit after 1": {"exit": {"layer": 1}},
    "fastv then exit": {"fastv": {"layer": 1, "keep": 0.5}, "exit": {"layer": 2}},
    "fastv then pyramid": {"fastv": {"layer": 1, "keep": 0.75},
                           "pyramid": {"stages": [2, 3], "keep": 0.5}},
    "pyramid then exit": {"pyramid": {"stages": [1], "keep": 0.5}, "exit": {"layer": 1}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_cuts_match_the_eager_reference(built: Path, tiny: tuple[Any, Any], tmp_path: Path,
                                        case: str) -> None:
    """The rewritten decoder's first logits equal HF's layers with the same selections,
    and each layer's cache holds the tokens the plan gives it."""
    model, geo = tiny
    cuts = _cuts(geo, **CASES[case])
    emb, at = prompt_embeds(model, geo, 5, seed=len(case))
    ref = reference.generate(model, geo, cuts, emb, at, 1, set())
    decoder.rewrite(built / "model.onnx", tmp_path / "d.onnx",
                    decoder.cut_passes(cuts.lm_steps, at))
    out = run_decoder(tmp_path / "d.onnx", emb.numpy())
    np.testing.assert_allclose(out["logits"][0, 0], ref.first_logits.numpy(), rtol=0,
                               atol=1e-4)
    s, p = emb.shape[1], cuts.prefill
    lengths = [out[f"present.{i}.key"].shape[2] for i in range(geo.lm_layers)]
    assert lengths == [s - (p - cuts.tokens_at(i)) for i in range(geo.lm_layers)]


def test_pyramid_plan_follows_the_reference_ratios(tiny: tuple[Any, Any]) -> None:
    _model, geo = tiny  # 16 visual tokens, 4 LM layers
    cuts = _cuts(geo, pyramid={"stages": [1, 2, 3], "keep": 0.5})
    assert [(st.layer, st.tokens_in, st.tokens_out) for st in cuts.lm_steps] == \
        [(1, 16, 8), (2, 8, 4), (3, 4, 2)]
    assert plan.layer_tokens(geo, cuts) == [40, 32, 28, 26]
    # each stage's layer projects the tokens before its cut (the reference ranks with them)
    assert plan.qkv_tokens(geo, cuts) == [40, 40, 32, 28]
    g = plan.step_gflops(geo, cuts)
    assert g == sorted(g, reverse=True) and g[-1] == plan.gflops(geo, cuts)
    uncut = plan.uncut(from_dict({"name": "u", "method": "none", **SMALL}, "t"), geo)
    assert plan.gflops(geo, uncut) > g[0]
    listed = _cuts(geo, pyramid={"stages": [1, 3], "keep": [0.3, 0.1]})
    assert [st.tokens_out for st in listed.lm_steps] == [4, 1]  # int(16·0.3), int(16·0.1)
    ex = _cuts(geo, exit={"layer": 2})
    assert [(st.layer, st.tokens_out) for st in ex.lm_steps] == [(3, 0)]
    assert plan.layer_tokens(geo, ex) == [40, 40, 40, 24]


@pytest.mark.parametrize(("stages", "ratios"), [([1, 2, 3], [1.0, 0.5, 0.25, 0.125]),
                                                ([2], [1.0, 0.3]),
                                                ([1, 3], [1.0, 0.75, 0.375])])
def test_pyramid_matches_the_authors_code(built: Path, tiny: tuple[Any, Any], tmp_path: Path,
                                          stages: list[int], ratios: list[float]) -> None:
    """vtc's rewritten decoder against the independent PyramidDrop oracle: first-step
    logits within 1e-4; vtc's eager reference (KV cache, compacted positions) decodes
    the oracle's no-cache greedy tokens."""
    model, geo = tiny
    cuts = _cuts(geo, pyramid={"stages": stages, "keep": ratios[1:]})
    emb, at = prompt_embeds(model, geo, 6, seed=sum(stages))
    want = pdrop_logits(model, emb, at, geo.visual, stages, ratios)
    decoder.rewrite(built / "model.onnx", tmp_path / "d.onnx",
                    decoder.cut_passes(cuts.lm_steps, at))
    got = run_decoder(tmp_path / "d.onnx", emb.numpy())["logits"][0, 0]
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
    ours = reference.generate(model, geo, cuts, emb, at, 8, set())
    assert ours.tokens == pdrop_greedy(model, emb, at, geo.visual, stages, ratios, 8)


@pytest.mark.parametrize(("sections", "message"), [
    ({"pyramid": {"stages": [2, 1]}}, "pyramid.stages [2, 1] are not increasing"),
    ({"pyramid": {"stages": [0, 2]}}, "give layers ≥ 1"),
    ({"pyramid": {"keep": 1.5}}, "pyramid.keep 1.5 is not in (0, 1]"),
    ({"pyramid": {"keep": 0.0}}, "pyramid.keep 0.0 is not in (0, 1]"),
    ({"pyramid": {"stages": [1, 2], "keep": [0.5]}}, "lists 1 fractions for 2 stages"),
    ({"pyramid": {"stages": [1, 2], "keep": [0.25, 0.5]}}, "grows"),
    ({"exit": {"layer": -1}}, "exit.layer is -1"),
])
def test_schedule_bad_input_is_one_line(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        from_dict({"name": "t", "method": list(sections), **sections}, "test")


@pytest.mark.parametrize(("sections", "message"), [
    ({"pyramid": {"stages": [1, 4]}}, "pyramid.stages reach layer 4 but the language model "
                                      "has 4 layers"),
    ({"exit": {"layer": 3}}, "exit.layer is 3 but the language model has 4 layers"),
    ({"exit": {"layer": 9}}, "exit.layer is 9"),
    ({"pyramid": {"stages": [1, 3]}, "exit": {"layer": 1}},
     "pyramid cuts at LM layer 3 and exit at 2; give each cut a later layer"),
])
def test_cuts_past_the_lm_are_refused(tiny: tuple[Any, Any], sections: dict[str, Any],
                                      message: str) -> None:
    _model, geo = tiny
    with pytest.raises(BudgetError, match=message):
        _cuts(geo, **sections)
