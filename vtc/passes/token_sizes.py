"""Token sizes as a graph output: a merged token sequence for a decoder.

When the graph's output is the token sequence (an encoder whose memory a text
decoder reads through cross-attention) and the recipe keeps it merged
(`tokens_out: merged`), the decoder needs to know how many original tokens
each output token stands for, to weight its cross-attention as ToMe weights
self-attention (add log(size) to the logits). The sizes the merges carry beside
the stream become a second graph output::

    before:  … ─► x_L[B, N', C] ─► LN ─► tokens[B, N', C]                 (graph output)
             s_L[B, N', 1]  (internal: each token's size)
    after:   … ─► x_L[B, N', C] ─► LN ─► tokens[B, N', C]                 (graph output 0)
             s_L[B, N', 1] ─► Reshape[B, N'] ─► token_sizes[B, N'] float32 (graph output 1)

Sizes of the outputs sum to N (every original token counted once) for merges;
after a prune (EViT) the fused token carries the dropped tokens' sizes.
"""

from __future__ import annotations

import onnx_ir as ir

from vtc.passes.emit import Emitter

OUTPUT = "token_sizes"


def add_sizes_output(model: ir.Model, size: ir.Value, tokens: int) -> ir.Value:
    """Add the graph output `token_sizes` `[B, tokens]` (float32) computed from `size`
    `[B, tokens, 1]` (its shape is inferred by the shape fix-up that follows)."""
    em = Emitter(model.graph, "vtc_token_sizes")
    out = em.op("Reshape", size, em.const([-1, tokens]))
    anchor = size.producer()
    assert anchor is not None, "token sizes come from a reduction node"
    em.insert_after(anchor)
    out.name = OUTPUT
    out.type = ir.TensorType(ir.DataType.FLOAT)
    model.graph.outputs.append(out)
    return out
