"""From recipe sections to the budget: which method acts in which block, and what
it does there, walking the blocks in order (a block's token count depends on the
reductions before it, whatever method made them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from vtc.budget import (
    NONE,
    Budget,
    BudgetError,
    Geometry,
    LayerPlan,
    Pricing,
    SitePlan,
    choose,
    finish,
)
from vtc.methods.base import Method, MethodConfig

Section = tuple[Method, MethodConfig]


def _owners(geo: Geometry, sections: Sequence[Section]) -> dict[int, int]:
    """Block → index of the section acting in it; overlapping claims are an error."""
    owners: dict[int, int] = {}
    for k, (method, cfg) in enumerate(sections):
        for b in method.blocks(cfg, geo):
            if b in owners:
                other = sections[owners[b]][0].name
                both = sorted(set(method.blocks(cfg, geo)) & set(
                    sections[owners[b]][0].blocks(sections[owners[b]][1], geo)))
                raise BudgetError(
                    f"{other} and {method.name} both act in blocks {both}; a recipe chaining "
                    f"methods gives them disjoint blocks: set {other}.layers and "
                    f"{method.name}.layers (0-based, e.g. [0, 1, 2, 3, 4, 5] and [8])")
            owners[b] = k
    return owners


def schedule(geo: Geometry, sections: Sequence[Section]) -> Budget:
    """The budget of resolved sections (targets such as a FLOPs ratio already solved)."""
    owners = _owners(geo, sections)
    plans: list[LayerPlan] = []
    nth = [0] * len(sections)
    n, bias, overhead = geo.tokens, False, 0
    for b in range(geo.layers):
        k = owners.get(b)
        step = None
        if k is not None:
            method, cfg = sections[k]
            step = method.plan_block(cfg, geo, b, nth[k], n)
            nth[k] += 1
        if k is None or step is None or step.tokens_out >= n:
            plans.append(LayerPlan(b, n, n, attn_bias=bias))
            continue
        plan = LayerPlan(b, n, step.tokens_out, method.name, step.params, attn_bias=bias)
        plans.append(plan)
        overhead += method.overhead(plan, geo)
        if method.merges:
            bias = method.attn_bias(cfg)
        n = step.tokens_out
    settings = {m.name: cfg.model_dump(mode="json") for m, cfg in sections}
    scores = {m.name: s for m, cfg in sections if (s := m.token_score(cfg, geo)) is not None}
    return finish(geo, plans, tuple(m.name for m, _ in sections), settings, overhead, scores)


def formulate(budget: Budget, sections: Sequence[Section], pricing: Pricing) -> Budget:
    """The budget with each reducing block's formulation: the one its section forces, or
    the cheaper by the cost model for `pricing` (`vtc.budget.choose`; nodes counted by
    `vtc.methods.costs`)."""
    from vtc.methods.costs import site_costs

    cfgs = {m.name: (m, cfg) for m, cfg in sections}
    layers, sites, sized = [], [], False
    for lp in budget.layers:
        if lp.method == NONE:
            layers.append(lp)
            continue
        method, cfg = cfgs[lp.method]
        costs = site_costs(method, lp, budget.geometry, sized)
        forced = method.formulation(cfg)
        if forced != "auto" and forced not in costs:
            raise BudgetError(f"{method.name}.formulation={forced}: {method.name} is written "
                              f"as {' or '.join(costs)} only")
        chosen = forced if forced != "auto" else choose(costs, pricing)
        sites.append(SitePlan(lp.index, lp.method, chosen,
                              "recipe" if forced != "auto" else "cost", costs, pricing))
        layers.append(dataclasses.replace(lp, formulation=chosen))
        sized = sized or method.merges
    return dataclasses.replace(budget, layers=tuple(layers), sites=tuple(sites))


def plan_budget(geo: Geometry, sections: Sequence[Section],
                pricing: Pricing | None = None) -> Budget:
    """Resolve every section against the model (in recipe order), schedule them, and
    pick each reducing block's formulation for `pricing` (default: ONNX Runtime on the
    CPU at batch 1).

    Raises BudgetError when a section cannot be realised (with the fix in the text)."""
    resolved = list(sections)
    for i, (method, cfg) in enumerate(resolved):
        def ratio_of(c: MethodConfig, i: int = i, method: Method = method) -> float:
            trial = list(resolved)
            trial[i] = (method, c)
            return schedule(geo, trial).flops_ratio

        resolved[i] = (method, method.resolve(cfg, geo, ratio_of))
    budget = schedule(geo, resolved)
    assert all(lp.method == NONE or lp.method in budget.methods for lp in budget.layers)
    return formulate(budget, resolved, pricing or Pricing())
