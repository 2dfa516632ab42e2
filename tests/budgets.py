"""Budgets for tests, built the way a recipe builds them (the method registry's
sections through `vtc.methods.plan_budget`)."""

from __future__ import annotations

from typing import Any

from vtc import methods
from vtc.budget import Budget, Geometry, no_budget

__all__ = ["budget", "evit_budget", "no_budget", "pitome_budget", "tome_budget"]


def budget(geo: Geometry, *chain: tuple[str, dict[str, Any]]) -> Budget:
    """A budget from (method name, section) pairs, e.g. ("tome", {"r": 4})."""
    sections = [(methods.get(name), methods.get(name).config(**cfg)) for name, cfg in chain]
    return methods.plan_budget(geo, sections)


def tome_budget(geo: Geometry, r: int | list[int] | None = None,
                flops_ratio: float | None = None, proportional_attention: bool = True,
                **kw: Any) -> Budget:
    return budget(geo, ("tome", dict(r=r, flops_ratio=flops_ratio,
                                     proportional_attention=proportional_attention, **kw)))


def pitome_budget(geo: Geometry, r: int | list[int] | None = None, **kw: Any) -> Budget:
    return budget(geo, ("pitome", dict(r=r, **kw)))


def evit_budget(geo: Geometry, keep_rate: float | None, layers: list[int] | None,
                fuse: str = "sum", keep: int | None = None, score: str | None = None,
                **kw: Any) -> Budget:
    """score None: "cls" where the model has a protected token, else "mean"."""
    score = score or ("cls" if geo.protected else "mean")
    return budget(geo, ("evit", dict(keep_rate=keep_rate, layers=layers, fuse=fuse, keep=keep,
                                     score=score, **kw)))
