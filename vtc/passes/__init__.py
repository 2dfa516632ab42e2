"""Graph passes and helpers on the ONNX IR that know no reduction method.

* `base` — what a pass is (an onnx-ir in-place pass: requires → call → ensures) and
  `run`, which applies a sequence of them;
* `encoder` — the encoder rewrite as such a sequence (locate, reduce, size bias,
  unmerge, token sizes, shape fix-up, check); the decoder's passes (`decoder_layers`,
  `decoder_cuts`, `last_logits`, `int4`) are run by `vtc.vlm.decoder`;
* `graph` — load/prepare a model, find its transformer blocks from structure alone;
* `emit` — the node builder every rewrite uses (portable ops only);
* `shape_fixup` — rewrite constants that baked the old token count;
* `size_bias` — proportional attention (log sizes added to the logits);
* `unmerge` — copy merged tokens back to the full grid before a dense consumer;
* `dynamic_batch` — give a rewritten static-batch graph a symbolic batch again;
* `fuse_attention` — each attention block as one com.microsoft.MultiHeadAttention
  (for engines that run contrib ops; never in the bundle's portable graph).

The methods (`vtc.methods`) write the reductions themselves (`vtc.methods.rewrite` is
the one pass that dispatches to them); the compress stage (`vtc.stages.compress`) runs
the sequence.
"""

from vtc.passes.base import Pass, run
from vtc.passes.dynamic_batch import PROBES, make_batch_dynamic
from vtc.passes.fuse_attention import FuseResult, fuse_attention, fuse_file
from vtc.passes.graph import Block, GraphError, NoBlocksError, find_blocks
from vtc.passes.model_io import check, load, prepare, read_onnx

__all__ = [
    "PROBES",
    "Block",
    "FuseResult",
    "GraphError",
    "NoBlocksError",
    "Pass",
    "check",
    "find_blocks",
    "fuse_attention",
    "fuse_file",
    "load",
    "make_batch_dynamic",
    "prepare",
    "read_onnx",
    "run",
]
