"""Last-token logits: the decoder's head reads only the last position.

The builder's decoder returns ``logits[B, S, vocab]`` for every prompt position, and
onnxruntime-genai keeps only the last. After a FastV cut the prompt's length inside the
graph differs from the one genai allocated for, so the graph must say how long its
logits are: a static 1, which genai reads as "trimmed prefill logits"
(``Model::IsPruned``). It also spares the head's S - 1 unused rows.

Before::  hidden[B, S, D] ─► MatMul(W_head) ─► logits[B, S, vocab]
After::   hidden[B, S, D] ─► Slice(last position) ─► MatMul(W_head) ─► logits[B, 1, vocab]

The head is found from the graph output named by ``logits`` (genai's name), walking back
through an optional Cast and bias Add to its MatMul / MatMulNBits.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from vtc.passes.base import Pass
from vtc.passes.decoder_layers import DecoderStructureError
from vtc.passes.emit import Emitter

_INT_MAX = np.iinfo(np.int64).max


def apply(model: ir.Model, logits: str = "logits") -> bool:
    """Trim `model`'s logits to the last position in place (False when already trimmed)."""
    graph = model.graph
    out = next((v for v in graph.outputs if v.name == logits), None)
    if out is None:
        raise DecoderStructureError(f"the decoder has no output {logits!r}; vtc expects "
                                    "onnxruntime-genai's decoder outputs")
    if out.shape is not None and len(out.shape) == 3 and out.shape[1] == 1:
        return False
    node = out.producer()
    while node is not None and node.op_type in ("Cast", "Add"):
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type not in ("MatMul", "MatMulNBits"):
        raise DecoderStructureError(f"output {logits!r} is not made by a MatMul head; vtc "
                                    "expects onnxruntime-genai's decoder layout")
    hidden = node.inputs[0]
    assert hidden is not None
    e = Emitter(graph, "/vtc/last_logits")
    last = e.op("Slice", hidden, e.const([-1]), e.const([_INT_MAX]), e.const([1]))
    e.insert_before(node)
    node.replace_input_with(0, last)
    if out.shape is not None and len(out.shape) == 3:
        out.shape = ir.Shape([out.shape[0], 1, out.shape[2]])
    return True


class LastLogits(Pass):
    """`apply` as a pass (done: False when the logits were trimmed already); ensures the
    output is ``[B, 1, vocab]``."""

    name = "last_token_logits"

    def __init__(self, logits: str = "logits") -> None:
        super().__init__()
        self.logits = logits

    def apply(self, model: ir.Model) -> bool:
        self.done = apply(model, self.logits)
        return bool(self.done)

    def ensures(self, model: ir.Model) -> None:
        out = next(v for v in model.graph.outputs if v.name == self.logits)
        if out.shape is not None and len(out.shape) == 3 and out.shape[1] != 1:
            raise DecoderStructureError(f"output {self.logits!r} still has {out.shape[1]} "
                                        "positions after the trim")
