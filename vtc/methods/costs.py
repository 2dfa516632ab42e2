"""What each formulation of a reduction site costs, for the budget's cost model
(`vtc.budget.choose`): MACs and elements from the method (`Method.work`), nodes counted
by writing the site into a scratch graph of the block's shapes (batch 1), so the count
is the one `emit` really writes, not a figure kept beside it::

    scratch graph:  key_t[1, H, D, N], probs[1, H, N, N], x[1, N, C] (, size[1, N, 1])
                      └─► method.emit(site, formulation) ─► nodes counted, graph dropped

Counts are remembered per site shape (a flops_ratio solve or a sweep prices the same
sites again).
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

from vtc.budget import Geometry, LayerPlan, SiteCost
from vtc.methods.base import Method, Site
from vtc.methods.registry import get


@cache
def _nodes(method: str, tokens_in: int, tokens_out: int, params: tuple[tuple[str, Any], ...],
           protected: int, width: int, heads: int, sized: bool, formulation: str) -> int:
    import onnx_ir as ir

    from vtc.passes.emit import Emitter

    m = get(method)
    d, n = width // max(heads, 1), tokens_in

    def inp(name: str, shape: list[int]) -> ir.Value:
        return ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir.DataType.FLOAT))

    key_t, probs = inp("key_t", [1, heads, d, n]), inp("probs", [1, heads, n, n])
    x, size = inp("x", [1, n, width]), inp("size", [1, n, 1])
    graph = ir.Graph([key_t, probs, x, size], [], nodes=[], opset_imports={"": 18})
    em = Emitter(graph, f"vtc_{method}", m.extra_ops)
    plan = LayerPlan(0, tokens_in, tokens_out, method, dict(params))
    block: Any = SimpleNamespace(key_t=key_t, probs=probs, width=width, heads=heads,
                                 batch=1, folded=False, seq_first=False, tokens=n)
    m.emit(Site(em, block, x, size if sized else None, plan, protected, False, formulation))
    return len(em.nodes)


def site_costs(method: Method, plan: LayerPlan, geo: Geometry, sized: bool
               ) -> dict[str, SiteCost]:
    """Each formulation `method` can write `plan`'s site in → its `SiteCost` (per image
    MACs and elements, nodes per site), sizes flowing in when `sized`."""
    params = tuple(sorted(plan.params.items()))
    out = {}
    for f in method.formulations:
        macs, elements = method.work(plan, geo, f, sized)
        nodes = _nodes(method.name, plan.tokens_in, plan.tokens_out, params, geo.protected,
                       geo.width, geo.heads, sized, f)
        out[f] = SiteCost(macs, elements, nodes)
    return out
