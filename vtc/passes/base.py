"""What a vtc graph pass is, and the one runner every rewrite goes through.

A pass is an onnx-ir in-place pass (`onnx_ir.passes.InPlacePass`): ``requires`` checks
the graph is one the pass can rewrite, ``call`` rewrites it, ``ensures`` proves the
result. vtc's passes add two things to onnx-ir's contract:

* ``name`` — the key under which the runner records what the pass did;
* ``done`` — what it did (a count, a dict), read into report.json by the stage.

`run` applies a sequence of passes to one model. An encoder rewrite and a decoder
rewrite are both such sequences (`vtc.stages.compress`, `vtc.vlm.decoder`)::

    model ─► pass₁.requires ─► pass₁.call ─► pass₁.ensures ─► pass₂.requires ─► … ─► model'
                                      │
                                 done[pass₁.name]

onnx-ir wraps whatever ``requires``/``ensures`` raise in its own Pre/PostconditionError;
`run` gives a user-fixable vtc error (an `InputError`: "the graph has no blocks", "the
budget wants 197 tokens") back as itself, so the command still says one line, exit 2.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import onnx_ir as ir

from vtc.errors import InputError

__all__ = ["ForgetShapes", "Pass", "run"]


class Pass(ir.passes.InPlacePass):
    """A vtc rewrite step (module docstring). Subclasses implement `apply` (True when
    the graph changed) and may override `requires` and `ensures`."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.done: Any = None

    @abc.abstractmethod
    def apply(self, model: ir.Model) -> bool:
        """Rewrite `model` in place; True when it changed (what it did goes to `done`)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, self.apply(model))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def run(model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> dict[str, Any]:
    """Apply `passes` in order to `model` in place; returns ``{name: done}`` for each
    vtc pass (onnx-ir's own passes, e.g. RemoveUnusedNodesPass, record nothing)."""
    done: dict[str, Any] = {}
    for p in passes:
        try:
            p(model)
        except ir.passes.InvariantError as exc:
            cause = exc.__cause__
            if isinstance(cause, InputError):
                raise cause from None
            raise
        if isinstance(p, Pass) and p.name:
            done[p.name] = p.done
    return done


class ForgetShapes(Pass):
    """Drop the shape annotations of every intermediate value (graph inputs and outputs
    keep theirs): after a cut, an exporter's annotations name the old sequence length,
    and onnxruntime would plan buffers by them (done: how many were dropped)."""

    name = "shapes_dropped"

    def apply(self, model: ir.Model) -> bool:
        graph = model.graph
        keep = {id(v) for v in (*graph.inputs, *graph.outputs)}
        dropped = 0
        for node in graph:
            for v in node.outputs:
                if id(v) not in keep and v.shape is not None:
                    v.shape = None
                    dropped += 1
        self.done = dropped
        return dropped > 0
