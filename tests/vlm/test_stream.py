"""The streamed eager reference (`vtc.vlm.stream`): the LM's layers read from the
checkpoint one matrix at a time compute what the resident model computes, bit for bit,
hold no layer weight between forwards, and an int4 bundle built with it is judged against
the eager reference directly (no fp32 twin)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vtc.vlm import llava, reference, stream
from vtc.vlm.plan import plan

from .conftest import SMALL


def _lm_layer_params(model: Any) -> list[torch.Tensor]:
    return list(model.model.language_model.layers.parameters())


@pytest.fixture(scope="module")
def both(llava_dir: Path) -> tuple[Any, Any, Any]:
    resident, geo = llava.load(llava_dir)
    streamed, geo2 = llava.load(llava_dir, streamed=True)
    assert geo2 == geo
    return resident, streamed, geo


def test_streamed_layers_live_on_disk(both: tuple[Any, Any, Any]) -> None:
    resident, streamed, _geo = both
    params = _lm_layer_params(streamed)
    assert len(params) == len(_lm_layer_params(resident)) > 0
    assert all(p.device.type == "meta" for p in params)
    # everything outside the LM's layers is held, and equal to the resident model's
    res = dict(resident.named_parameters())
    held = {n: p for n, p in streamed.named_parameters() if p.device.type != "meta"}
    assert held and all(torch.equal(p, res[n]) for n, p in held.items())
    assert len(held) + len(params) == len(res)


@pytest.mark.parametrize("recipe", [
    {"method": ["fastv"], "fastv": {"layer": 2, "keep": 0.5}},
    # PyramidDrop ranks with the layer's own q/k projections (called outside its forward)
    {"method": ["visionzip", "pyramid"], "visionzip": {"dominant": 6, "contextual": 3},
     "pyramid": {"stages": [1, 3], "keep": 0.5}},
])
def test_streamed_reference_equals_the_resident_one(both: tuple[Any, Any, Any],
                                                    recipe: dict[str, Any]) -> None:
    from vtc.recipe import from_dict

    resident, streamed, geo = both
    cuts = plan(from_dict({"name": "t", **recipe}, "test"), geo)
    ids = [1, 5, 6, geo.image_token_id, 7, 8, 9]
    px = torch.randn(1, 3, geo.image_size, geo.image_size, generator=torch.Generator()
                     .manual_seed(0))
    a = reference.generate_from_ids(resident, geo, cuts, ids, px, 6, {2})
    b = reference.generate_from_ids(streamed, geo, cuts, ids, px, 6, {2})
    assert a.tokens == b.tokens
    assert torch.equal(a.first_logits, b.first_logits)
    ha = reference.hf_generate(resident, geo, ids, px, 6, {2})
    hb = reference.hf_generate(streamed, geo, ids, px, 6, {2})
    assert ha.tokens == hb.tokens and torch.equal(ha.first_logits, hb.first_logits)
    # the weights were dropped again after every forward
    assert all(p.device.type == "meta" for p in _lm_layer_params(streamed))


def test_auto_streams_when_the_lm_takes_over_40_percent_of_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tc = llava.llava15_config(lm_layers=32).text_config
    assert 6.4e9 < stream.lm_layer_bytes(tc) / 4 < 6.5e9  # Llama-2-7B's layers: 6.48 B
    monkeypatch.setattr(stream, "memory_bytes", lambda: 24 * 2**30)
    assert stream.wanted("auto", tc) and not stream.wanted(False, tc)
    monkeypatch.setattr(stream, "memory_bytes", lambda: 128 * 2**30)
    assert not stream.wanted("auto", tc) and stream.wanted(True, tc)


def test_a_checkpoint_missing_a_layer_tensor_is_named(llava_dir: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from vtc.errors import InputError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(llava_dir, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    gone = next(k for k in tensors if "layers.3.mlp.up_proj" in k)
    del tensors[gone]
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"no tensor for LM layer 3's mlp\.up_proj\.weight"):
        llava.load(ckpt, streamed=True)


def test_int4_bundle_with_a_streamed_reference(llava_dir: Path, tmp_path: Path) -> None:
    """No fp32 twin: parity covers the vision graph, the int4 decoder is judged against the
    eager reference (deployment), the decoder parity gates are skipped, not passed."""
    from vtc import pipeline
    from vtc.recipe import from_dict

    out = tmp_path / "out"
    logs: list[str] = []
    rec = from_dict({"name": "t", "method": ["fastv"], "fastv": {"layer": 2, "keep": 0.5},
                     **SMALL, "generate": {**SMALL["generate"], "precision": "int4",
                                           "stream_lm": True},
                     "gates": {"min_tokens_equal": 1.0, "max_vision_diff": 1e-4,
                               "min_deploy_logits_cosine": 0.5}}, "test")
    pipeline.run(pipeline.Options(source=str(llava_dir), recipe=rec, out=out, batch=1,
                                  log=logs.append, bench=False))
    rep = json.loads((out / "report.json").read_text())
    gen, dep = rep["parity"]["generation"], rep["parity"]["deployment"]
    assert gen["reference"] == "streamed"
    assert gen["tokens_equal"] is None and gen["first_logits_max_abs_diff"] is None
    assert "no fp32 twin decoder is built" in gen["note"]
    assert gen["vision_max_abs_diff"] < 1e-4
    assert dep["against"] == "eager reference" and dep["precision"] == "int4"
    assert 0.5 < dep["first_logits_cosine_min"] < 1.0  # int4 differs, but not wildly
    assert rep["gates_skipped"] == ["min_tokens_equal"]
    assert {g["name"] for g in rep["gates"]} == {"max_vision_diff", "min_deploy_logits_cosine"}
    assert any("judged against the eager reference" in m for m in logs)
    assert not any("fp32 twin" in m and "prompt" in m for m in logs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no scratch left


def test_qwen_refuses_a_streamed_reference(qwen_dir: Path) -> None:
    from vtc.errors import InputError
    from vtc.recipe import from_dict
    from vtc.vlm import families

    rec = from_dict({"name": "t", "method": ["fastv"], "fastv": {"layer": 1, "keep": 0.5},
                     "generate": {"stream_lm": True}}, "test")
    with pytest.raises(InputError, match="stream_lm: true is supported for LLaVA checkpoints "
                                         "only"):
        families.get("qwen2_5_vl").load(qwen_dir, True, rec)
