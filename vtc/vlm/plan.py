"""The static budget of a LLaVA bundle from a recipe: encoder cuts over the tower's
blocks before the feature layer, VisionZip's K, FastV's (L, R), the nominal prompt length;
and the analytic MACs that give the FLOPs ratios."""

from __future__ import annotations

from typing import Any

from vtc import methods
from vtc.budget import Budget, BudgetError, Geometry
from vtc.methods.fastv import FastV
from vtc.methods.visionzip import VisionZipConfig

from .llava import VlmGeometry
from .modules import Cuts


def encoder_geometry(geo: VlmGeometry) -> Geometry:
    """The tower as an encoder for the block methods: blocks 0..F-1 (layer F's attention
    is what VisionZip reads, so it stays whole)."""
    return Geometry(tokens=geo.tower_tokens, protected=1, width=geo.vision_width,
                    mlp_width=geo.vision_mlp, layers=geo.feature_layer, heads=geo.vision_heads)


def plan(recipe: Any, geo: VlmGeometry) -> Cuts:
    """The recipe's cuts on this model (BudgetError naming the misfit)."""
    enc = [s for s in recipe.sections() if s[0].site == "encoder"]
    budget: Budget | None = None
    tower_out = geo.tower_tokens
    if enc:
        if geo.feature_layer == 0:
            raise BudgetError("the feature layer is the tower's first layer: no block is left "
                              "for an encoder cut; drop it")
        budget = methods.plan_budget(encoder_geometry(geo), enc)
        tower_out = budget.tokens_out
    by_name = {m.name: (m, c) for m, c in recipe.cuts()}
    visionzip = None
    visual = tower_out - 1 if geo.strategy == "default" else tower_out
    if "visionzip" in by_name:
        m, cfg = by_name["visionzip"]
        visual = m.tokens_after(cfg, tower_out)  # type: ignore[attr-defined]
        assert isinstance(cfg, VisionZipConfig)
        visionzip = (cfg.dominant, cfg.contextual)
    fastv = None
    if "fastv" in by_name:
        m, cfg = by_name["fastv"]
        assert isinstance(m, FastV)
        m.check_layer(cfg, geo.lm_layers)
        fastv = (cfg.layer, m.tokens_after(cfg, visual))  # type: ignore[attr-defined]
    prompt = recipe.generate.prompt_tokens
    return Cuts(budget, visionzip, fastv, visual, visual + prompt)


def uncut(recipe: Any, geo: VlmGeometry) -> Cuts:
    return Cuts(None, None, None, geo.visual, geo.visual + recipe.generate.prompt_tokens)


def layer_tokens(geo: VlmGeometry, cuts: Cuts) -> list[int]:
    cut = cuts.fastv[0] if cuts.fastv is not None else geo.lm_layers
    return [cuts.prefill if i < cut else cuts.lm_tokens for i in range(geo.lm_layers)]


def lm_macs(geo: VlmGeometry, tokens: list[int]) -> int:
    """Prefill MACs of the LM layers (projections, QKᵀ and PV, gated MLP) at `tokens`
    per layer, plus the head on the last position."""
    d, hd = geo.lm_width, geo.head_dim
    proj = d * hd * (2 * geo.lm_heads + 2 * geo.kv_heads)
    total = 0
    for n in tokens:
        total += n * proj + 2 * n * n * geo.lm_heads * hd + 3 * n * d * geo.mlp_width
    return total + d * geo.vocab


def vision_macs(geo: VlmGeometry, cuts: Cuts) -> int:
    """Tower MACs up to the feature layer plus the projector on the K tokens."""
    c = geo.vision_width
    per = [geo.tower_tokens] * (geo.feature_layer + 1)
    if cuts.encoder is not None:
        per = [lp.tokens_in for lp in cuts.encoder.layers] + [cuts.encoder.tokens_out]
    total = sum(n * (4 * c * c + 2 * c * geo.vision_mlp) + 2 * n * n * c for n in per)
    return total + cuts.visual * (c * geo.lm_width + geo.lm_width * geo.lm_width)
