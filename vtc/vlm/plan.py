"""The static budget of a vision-language bundle from a recipe: encoder cuts over the
tower's blocks (where the family's geometry allows them), then every cut outside the
encoder as its registered method plans it (`VisualCut.plan_cut`: a projector cut such as
VisionZip's K, LM cuts such as FastV's (L, R)), the nominal prompt length; and the
analytic MACs that give the FLOPs ratios.

The family's geometry (`VlmShape`: LLaVA's `VlmShape`, Qwen2.5-VL's `QwenGeometry`)
says what the cuts are sized by: the tokens a projector cut sees (``tower_tokens``, a
CLS among them for LLaVA, merged tokens for Qwen2.5-VL), the tokens the LM reads
uncut, the encoder geometry of its tower (or a refusal naming the method), the LM's
shape and the tower's MACs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from vtc import methods
from vtc.budget import Budget, BudgetError, Geometry
from vtc.methods.cut import CutStep, VisualCut


class VlmShape(Protocol):
    """What `plan` reads of a family's geometry (module docstring)."""

    @property
    def tower_tokens(self) -> int: ...

    @property
    def lm_layers(self) -> int: ...

    @property
    def lm_width(self) -> int: ...

    @property
    def lm_heads(self) -> int: ...

    @property
    def kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def mlp_width(self) -> int: ...

    @property
    def vocab(self) -> int: ...

    @property
    def visual(self) -> int: ...

    @property
    def dropped_at_projector(self) -> int: ...

    @property
    def rope(self) -> str: ...

    def encoder_geometry(self, sections: list[Any]) -> Geometry: ...

    def vision_macs(self, cuts: Any) -> int: ...

SITES = ("projector", "lm")  # where a VisualCut acts, in the order the tokens meet them


@dataclass(frozen=True)
class Cuts:
    """The static budget of one vision-language bundle.

    encoder: the budget of tower blocks 0..F-1 (None: uncut); steps: the cuts outside
    the encoder, each from its registered method (`CutStep`), projector cuts first, then
    LM cuts by layer; visual: tokens per image the LM reads (after the projector cuts);
    prefill: the nominal prompt length P (visual + generate.prompt_tokens) the analytic
    FLOPs are counted at."""

    encoder: Budget | None
    steps: tuple[CutStep, ...]
    visual: int
    prefill: int

    @property
    def projector(self) -> CutStep | None:
        return next((st for st in self.steps if st.site == "projector"), None)

    @property
    def lm_steps(self) -> tuple[CutStep, ...]:
        return tuple(st for st in self.steps if st.site == "lm")

    def tokens_at(self, layer: int) -> int:
        """Tokens LM layer `layer` reads at a full prefill."""
        return self.prefill - sum(st.dropped for st in self.lm_steps
                                  if st.layer is not None and st.layer <= layer)

    @property
    def lm_tokens(self) -> int:
        """Tokens the LM layers past every LM cut read, at a full prefill."""
        return self.prefill - sum(st.dropped for st in self.lm_steps)


def _cut_steps(recipe: Any, geo: VlmShape, tower_out: int) -> tuple[list[CutStep], int]:
    """Every cut outside the encoder as its method plans it; and the visual tokens the
    LM reads. No method is named: each one's site says where it acts."""
    cuts: list[tuple[VisualCut, Any]] = []
    for m, cfg in recipe.cuts():
        if not isinstance(m, VisualCut) or m.site not in SITES:
            raise BudgetError(f"{m.name} acts at {m.site!r}, which a vision-language bundle "
                              f"has no place for (sites: {', '.join(SITES)})")
        cuts.append((m, cfg))
    steps: list[CutStep] = []
    proj = [(m, c) for m, c in cuts if m.site == "projector"]
    if len(proj) > 1:
        raise BudgetError(f"{' and '.join(m.name for m, _ in proj)} both cut at the projector; "
                          "keep one")
    visual = tower_out - geo.dropped_at_projector
    for m, cfg in proj:
        steps.append(m.plan_cut(cfg, tower_out, geo.lm_layers))
        visual = steps[-1].tokens_out
    # LM cuts by layer; each selects among the tokens the one before it left
    lm = [(m, c) for m, c in cuts if m.site == "lm"]
    first = {m.name: m.plan_cuts(c, visual, geo.lm_layers)[0].layer or 0 for m, c in lm}
    reaching = visual
    for m, cfg in sorted(lm, key=lambda mc: first[mc[0].name]):
        for st in m.plan_cuts(cfg, reaching, geo.lm_layers):
            if steps and steps[-1].site == "lm" and (steps[-1].layer or 0) >= (st.layer or 0):
                raise BudgetError(f"{steps[-1].method} cuts at LM layer {steps[-1].layer} and "
                                  f"{st.method} at {st.layer}; give each cut a later layer "
                                  "than the one before (cuts of two methods may not "
                                  "interleave)")
            steps.append(st)
            reaching = st.tokens_out
    if geo.rope == "mrope":
        _keep_positions(steps)
    return steps, visual


def _keep_positions(steps: list[CutStep]) -> None:
    """Refuse an LM cut that renumbers positions on a model whose positions are 3-D."""
    from vtc.methods.cut import get_cut

    for st in steps:
        if st.site == "lm" and get_cut(st.method).lm_stage(st).positions == "compact":
            raise BudgetError(
                f"{st.method} renumbers the kept tokens' positions after its cut at LM layer "
                f"{st.layer} (its reference code, on a 1-D rotary LLM); this model's "
                "positions are 3-D (M-RoPE), for which no renumbering is defined: keep them "
                f"with --set {st.method}.positions=keep")


def plan(recipe: Any, geo: VlmShape) -> Cuts:
    """The recipe's cuts on this model (BudgetError naming the misfit)."""
    enc = [s for s in recipe.sections() if s[0].site == "encoder"]
    budget: Budget | None = None
    tower_out = geo.tower_tokens
    if enc:
        budget = methods.plan_budget(geo.encoder_geometry(enc), enc)
        tower_out = budget.tokens_out
    steps, visual = _cut_steps(recipe, geo, tower_out)
    return Cuts(budget, tuple(steps), visual, visual + recipe.generate.prompt_tokens)


def check_context(cuts: Cuts, max_new_tokens: int, context: int | None) -> None:
    """The nominal prefill (visual + generate.prompt_tokens) and the new tokens fit the
    LM's context (its max_position_embeddings, the decoder's max_length); BudgetError
    naming the fix otherwise."""
    if context is not None and cuts.prefill + max_new_tokens > context:
        raise BudgetError(f"generate.prompt_tokens {cuts.prefill - cuts.visual} + "
                          f"{cuts.visual} visual tokens + generate.max_new_tokens "
                          f"{max_new_tokens} pass the decoder's max_length of {context} tokens "
                          "(the language model's max_position_embeddings); lower them")


def uncut(recipe: Any, geo: VlmShape) -> Cuts:
    return Cuts(None, (), geo.visual, geo.visual + recipe.generate.prompt_tokens)


def layer_tokens(geo: VlmShape, cuts: Cuts) -> list[int]:
    return [cuts.tokens_at(i) for i in range(geo.lm_layers)]


def qkv_tokens(geo: VlmShape, cuts: Cuts) -> list[int]:
    """Tokens each LM layer's q/k/v projections read at a full prefill: the layer's own
    count, but the count before the cut at a layer whose cut ranks with that layer's own
    projections (PyramidDrop's stages: the reference projects every token, then drops)."""
    from vtc.methods.cut import get_cut

    own = {st.layer for st in cuts.lm_steps
           if get_cut(st.method).lm_stage(st).score == "own"}
    return [cuts.tokens_at(i - 1) if i in own else cuts.tokens_at(i)
            for i in range(geo.lm_layers)]


def lm_macs(geo: VlmShape, tokens: list[int], qkv: list[int] | None = None) -> int:
    """Prefill MACs of the LM layers (projections, QKᵀ and PV, gated MLP) at `tokens`
    per layer (`qkv`: the tokens the q/k/v projections read, when more), plus the head
    on the last position."""
    d, hd = geo.lm_width, geo.head_dim
    qkv_w = d * hd * (geo.lm_heads + 2 * geo.kv_heads)
    out_w = d * hd * geo.lm_heads
    total = 0
    for i, n in enumerate(tokens):
        q = qkv[i] if qkv is not None else n
        total += q * qkv_w + n * out_w + 2 * n * n * geo.lm_heads * hd + 3 * n * d * geo.mlp_width
    return total + d * geo.vocab


def gflops(geo: VlmShape, cuts: Cuts) -> float:
    """The LM's analytic prefill GFLOPs (2 × MACs) at the nominal prompt length."""
    return round(2 * lm_macs(geo, layer_tokens(geo, cuts), qkv_tokens(geo, cuts)) / 1e9, 4)


def step_gflops(geo: VlmShape, cuts: Cuts) -> list[float]:
    """The LM's prefill GFLOPs with the steps up to and including each one (a projector
    cut, always first, sets the visual count; each LM cut then shortens its layers):
    what each method leaves, the last entry being the bundle's."""
    return [gflops(geo, Cuts(cuts.encoder, cuts.steps[:k], cuts.visual, cuts.prefill))
            for k in range(1, len(cuts.steps) + 1)]


def vision_macs(geo: VlmShape, cuts: Cuts) -> int:
    """The tower's MACs with the cuts (the family's count)."""
    return geo.vision_macs(cuts)
