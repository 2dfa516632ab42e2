"""The embedding graph of a LLaVA bundle, in onnxruntime-genai's multimodal layout:
token embeddings with the image's features spliced in at the image tokens.

    input_ids[B, S] ─► Gather(table) ─► text[B, S, D] ────────────────────────┐
    input_ids == image_token_id ─► is_image[B, S] ─► CumSum - 1 ─► slot[B, S]  │
    image_features[1, K, D] ─► (+ one zero row) ─► Gather(slot) ─► img[B, S, D]│
                                    Where(is_image, img, text) ◄───────────────┘
                                        ─► inputs_embeds[B, S, D] (the decoder's dtype)

The prompt carries K image tokens in a row (the processor expands the one ``<image>``
of the template to the cut count K); the n-th image token takes feature row n. While
decoding genai passes zero image features and no image token, so the zero row is never
read. The token table is stored here only (the decoder is exported without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write(table: np.ndarray, image_token_id: int, dtype: type, path: Path,
          features_rank: int = 3) -> Path:
    """The graph for `table` ``[vocab, D]`` into `path`; `dtype` is the decoder's
    ``inputs_embeds`` type (np.float32 or np.float16); `features_rank` the rank of
    ``image_features``: 3 (``[1, K, D]``, LLaVA) or 2 (``[K, D]``, what genai's Qwen
    pipeline hands over)."""
    import onnx_ir as ir
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    from vtc.passes.model_io import save_model

    d = table.shape[1]
    elem = T.FLOAT16 if dtype == np.float16 else T.FLOAT
    nodes = [
        h.make_node("Gather", ["table", "input_ids"], ["text"]),
        h.make_node("Equal", ["input_ids", "image_token_id"], ["is_image"]),
        h.make_node("Cast", ["is_image"], ["is_image_i"], to=T.INT64),
        h.make_node("CumSum", ["is_image_i", "one"], ["count"]),
        h.make_node("Sub", ["count", "one"], ["slot_n"]),
        h.make_node("Shape", ["image_features"], ["features_shape"]),
        h.make_node("Gather", ["features_shape", "k_axis"], ["k"], axis=0),
        h.make_node("Where", ["is_image", "slot_n", "k"], ["slot"]),
        h.make_node("Reshape", ["image_features", "rows_shape"], ["rows"]),
        h.make_node("Cast", ["rows"], ["rows_t"], to=elem),
        h.make_node("Concat", ["rows_t", "zero_row"], ["rows_z"], axis=0),
        h.make_node("Gather", ["rows_z", "slot"], ["image"], axis=0),
        h.make_node("Unsqueeze", ["is_image", "last_axis"], ["is_image3"]),
        h.make_node("Where", ["is_image3", "image", "text"], ["inputs_embeds"]),
    ]
    inits = [numpy_helper.from_array(np.ascontiguousarray(table.astype(dtype)), "table"),
             numpy_helper.from_array(np.array(image_token_id, np.int64), "image_token_id"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array(features_rank - 2, np.int64), "k_axis"),
             numpy_helper.from_array(np.array([-1, d], np.int64), "rows_shape"),
             numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
             numpy_helper.from_array(np.zeros((1, d), dtype), "zero_row")]
    graph = h.make_graph(
        nodes, "embedding",
        [h.make_tensor_value_info("input_ids", T.INT64, ["batch_size", "sequence_length"]),
         h.make_tensor_value_info("image_features", T.FLOAT,
                                  [1, "num_image_tokens", d][3 - features_rank:])],
        [h.make_tensor_value_info("inputs_embeds", elem,
                                  ["batch_size", "sequence_length", d])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    save_model(ir.from_proto(model), path)
    return path
