"""The decoder onnxruntime-genai's model builder writes, and vtc's passes on it: layers
found by structure, FastV's cut against the eager reference (HF's layers), last-token
logits, the LM directory, precisions, and the structures the passes refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
import torch

from vtc.methods.cut import CutStep
from vtc.passes import decoder_cuts, decoder_layers, last_logits
from vtc.passes.decoder_cuts import CutPlan, CutStage
from vtc.vlm import decoder, reference
from vtc.vlm.plan import Cuts

from .conftest import prompt_embeds, run_decoder


def test_layers_found_by_structure(built: Path) -> None:
    layers = decoder_layers.find_layers(ir.load(str(built / "model.onnx")))
    assert [lay.index for lay in layers] == [0, 1, 2, 3]
    lay = layers[2]
    assert (lay.heads, lay.kv_heads, lay.head_dim, lay.packed) == (4, 2, 16, True)
    assert lay.norm.op_type == "SkipSimplifiedLayerNormalization"
    assert layers[0].norm.op_type == "SimplifiedLayerNormalization"


@pytest.mark.parametrize(("layer", "keep", "after"), [(2, 8, 4), (1, 3, 9), (3, 16, 2),
                                                      (2, 1, 0)])
def test_fastv_pass_matches_the_eager_reference(built: Path, tiny: tuple[Any, Any],
                                                tmp_path: Path, layer: int, keep: int,
                                                after: int) -> None:
    """The rewritten decoder's prompt logits equal HF's layers with FastV's cut (the same
    kept tokens, original rotary positions), and layers L.. write shorter caches."""
    model, geo = tiny
    emb, at = prompt_embeds(model, geo, after, seed=layer * 10 + keep)
    cuts = Cuts(None, (CutStep("fastv", "lm", geo.visual, keep, layer),), geo.visual, 0)
    ref = reference.generate(model, geo, cuts, emb, at, 1, set())
    done = decoder.rewrite(built / "model.onnx", tmp_path / "decoder.onnx",
                           decoder.cut_passes(cuts.lm_steps, at))
    assert done["lm_cuts"]["cuts"][0]["dropped"] == geo.visual - keep
    out = run_decoder(tmp_path / "decoder.onnx", emb.numpy())
    assert out["logits"].shape == (1, 1, geo.vocab)
    np.testing.assert_allclose(out["logits"][0, 0], ref.first_logits.numpy(), rtol=0,
                               atol=1e-4)
    s = emb.shape[1]
    lengths = [out[f"present.{i}.key"].shape[2] for i in range(4)]
    assert lengths == [s if i < layer else s - geo.visual + keep for i in range(4)]


def test_last_logits_alone_changes_nothing_but_the_length(built: Path, tiny: tuple[Any, Any],
                                                          tmp_path: Path) -> None:
    model, geo = tiny
    emb, _at = prompt_embeds(model, geo, 5, seed=3)
    full = run_decoder(built / "model.onnx", emb.numpy())["logits"]
    assert full.shape[1] == emb.shape[1]
    decoder.rewrite(built / "model.onnx", tmp_path / "d.onnx")
    last = run_decoder(tmp_path / "d.onnx", emb.numpy())["logits"]
    np.testing.assert_allclose(last[0, 0], full[0, -1], rtol=0, atol=1e-5)
    m = ir.load(str(tmp_path / "d.onnx"))
    assert last_logits.apply(m) is False  # already trimmed


def test_fastv_pass_refuses_what_does_not_fit(built: Path) -> None:
    m = ir.load(str(built / "model.onnx"))
    with pytest.raises(decoder_layers.DecoderStructureError, match="decoder has 4 layers"):
        decoder_cuts.apply(m, CutPlan(3, 16, (CutStage(4, 8),)))
    with pytest.raises(decoder_layers.DecoderStructureError, match="keeps 17 of 16"):
        decoder_cuts.apply(m, CutPlan(3, 16, (CutStage(2, 17),)))
    with pytest.raises(decoder_layers.DecoderStructureError, match="give each a later layer"):
        decoder_cuts.apply(m, CutPlan(3, 16, (CutStage(2, 8), CutStage(2, 4))))


def test_a_graph_without_decoder_layers_is_named(vit_onnx: Path) -> None:
    with pytest.raises(decoder_layers.DecoderStructureError,
                       match="no GroupQueryAttention node; vtc expects a decoder as "
                             "onnxruntime-genai's model builder writes it"):
        decoder_layers.find_layers(ir.load(str(vit_onnx)))


def test_lm_names_both_checkpoint_layouts() -> None:
    assert decoder.lm_name("language_model.model.layers.0.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    assert decoder.lm_name("model.language_model.norm.weight") == "model.norm.weight"
    assert decoder.lm_name("language_model.lm_head.weight") == "lm_head.weight"
    assert decoder.lm_name("lm_head.weight") == "lm_head.weight"
    assert decoder.lm_name("vision_tower.vision_model.post_layernorm.weight") is None
    assert decoder.lm_name("multi_modal_projector.linear_1.weight") is None


def test_lm_dir_holds_the_lm_tensors_unchanged(llava_dir: Path, tiny: tuple[Any, Any],
                                               tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, _geo = tiny
    lm = decoder.write_lm_dir(llava_dir, model.config.text_config, tmp_path / "lm")
    got: dict[str, torch.Tensor] = {}
    for f in lm.glob("*.safetensors"):
        got.update(load_file(str(f)))
    want = {decoder.lm_name(k): v for k, v in model.state_dict().items()
            if decoder.lm_name(k) is not None}
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert (lm / "tokenizer.json").is_file()


def test_lm_dir_config_names_the_stored_dtype(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """The builder loads the LM in its config's dtype: the LM directory says the dtype the
    tensors are stored in (fp16 here), not the fp32 of the model vtc loaded — an fp16 7B
    LM read as fp32 would take 28 GB in the builder."""
    import json

    from safetensors.torch import save_file

    model, _geo = tiny
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
              str(ckpt / "model.safetensors"))
    assert model.config.text_config.dtype in (torch.float32, "float32")
    lm = decoder.write_lm_dir(ckpt, model.config.text_config, tmp_path / "lm")
    cfg = json.loads((lm / "config.json").read_text())
    assert cfg["dtype"] == "float16" and "torch_dtype" not in cfg


def test_precisions_shrink_the_decoder(built: Path, llava_dir: Path, tiny: tuple[Any, Any],
                                       tmp_path: Path) -> None:
    """fp16 (the builder's CUDA decoder: GroupQueryAttention in fp16) and int4
    (MatMulNBits) decoders: smaller, and FastV's pass applies to both with its selection
    in fp32. The fp16 decoder's genai config is on the CPU provider."""
    import json

    model, geo = tiny
    lm = decoder.write_lm_dir(llava_dir, model.config.text_config, tmp_path / "lm")
    size32 = (built / "model.onnx.data").stat().st_size  # the weights (the graph is tiny)
    for precision, limit in (("fp16", 0.52), ("int4", 0.30)):
        out = decoder.run_builder(lm, tmp_path / precision, precision, lambda _m: None)
        size = (out / "model.onnx.data").stat().st_size
        assert size < limit * size32, (precision, size, size32)
        m = ir.load(str(out / "model.onnx"))
        ops = {n.op_type for n in m.graph}
        assert "GroupQueryAttention" in ops and "MultiHeadAttention" not in ops
        assert ("MatMulNBits" in ops) == (precision == "int4")
        decoder_cuts.apply(m, CutPlan(3, geo.visual, (
            CutStage(1, 8), CutStage(2, 4, "own", "compact"), CutStage(3, 0, "none"))))
        for layer in (1, 2):
            casts = [n for n in m.graph if n.name.startswith(f"/vtc/cut{layer}/Cast")
                     and n.attributes["to"].value == ir.DataType.FLOAT]
            assert casts  # each selection reads fp32 copies
        cfg = json.loads((out / "genai_config.json").read_text())
        assert cfg["model"]["decoder"]["session_options"].get("provider_options", []) == []


def test_int4_pass_equals_the_builders_own_int4(built: Path, llava_dir: Path,
                                                tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """`passes.int4` on the builder's fp32 decoder gives the builder's own ``-p int4``
    decoder: the same nodes (names, inputs, attributes) and byte-identical initializers.
    (vtc quantizes one weight at a time because the builder's int4 path holds the whole
    fp32 graph in memory at once.)"""
    import os
    import subprocess
    import sys

    import onnx
    from onnx import numpy_helper

    from vtc.passes import int4

    model, _geo = tiny
    lm = decoder.write_lm_dir(llava_dir, model.config.text_config, tmp_path / "lm")
    theirs = tmp_path / "builder-int4"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(lm),
                    "-o", str(theirs), "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "c"),
                    "--extra_options", "exclude_embeds=true", "hf_token=false"],
                   check=True, capture_output=True, env=dict(os.environ, TQDM_DISABLE="1"))
    ours = tmp_path / "ours" / "model.onnx"
    ours.parent.mkdir()
    assert int4.quantize_file(built / "model.onnx", ours) == 4 * 5 + 1  # per layer + head
    a, b = onnx.load(str(theirs / "model.onnx")), onnx.load(str(ours))

    def nodes(m: Any) -> list[str]:
        return sorted(f"{n.op_type} {n.name} {list(n.input)} {list(n.output)} "
                      f"{sorted(str(x).replace(chr(10), ' ') for x in n.attribute)}"
                      for n in m.graph.node)

    assert nodes(a) == nodes(b)
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys()
    for name, x in ta.items():
        assert x.dtype == tb[name].dtype and np.array_equal(x, tb[name]), name


def test_builder_failure_is_one_line(tmp_path: Path) -> None:
    from vtc.errors import InputError

    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="onnxruntime-genai's model builder failed on"):
        decoder.run_builder(tmp_path / "lm", tmp_path / "out", "fp32", lambda _m: None)
    with pytest.raises(InputError, match="decoder precision 'int8'"):
        decoder.run_builder(tmp_path / "lm", tmp_path / "out", "int8", lambda _m: None)
