"""Qwen2.5-VL's parts against Hugging Face's own code and independent implementations:
the vision graph's module, VisionZip on a tower without CLS, the score, the runtime's
patches and M-RoPE positions. Fast: one tiny model, no export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tests.reference import visionzip_reference
from vtc.methods.cut import CutStep
from vtc.methods.visionzip import select
from vtc.runtime import mrope
from vtc.vlm import qwen2_5_vl
from vtc.vlm.plan import Cuts
from vtc.vlm.qwen_vision import QwenVision, merged_output


@pytest.fixture(scope="module")
def tiny() -> Any:
    torch.manual_seed(0)
    model = qwen2_5_vl.build(qwen2_5_vl.tiny_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def _geo(model: Any, size: tuple[int, int]) -> qwen2_5_vl.QwenGeometry:
    return qwen2_5_vl.check_config(model.config, "test", size)


@pytest.mark.parametrize("size", [(112, 112), (140, 112)], ids=["equal windows", "uneven"])
def test_vision_module_is_hf_tower_and_merger(tiny: Any, size: tuple[int, int]) -> None:
    """Uncut, vtc's traced module (windows as a batch or a block-diagonal mask, static
    rotary tables) gives HF's merged features, in HF's raster order."""
    geo = _geo(tiny, size)
    mod = QwenVision(tiny, geo, Cuts(None, (), geo.visual, geo.visual)).eval()
    px = torch.randn(geo.patches, 3 * 2 * 14 * 14)
    with torch.no_grad():
        feats, pos = mod(px)
        ref = tiny.model.visual(px, grid_thw=torch.tensor([[1, geo.grid_h, geo.grid_w]]))
    torch.testing.assert_close(feats, ref.pooler_output, rtol=0, atol=1e-5)
    assert pos.tolist() == list(range(geo.visual))
    assert mod.window_len == (16 if size == (112, 112) else 0)


def test_score_is_the_attention_each_merged_token_receives() -> None:
    """merged_output's score, by brute force: per merged token, the sum over its 4 patches
    of the attention they receive, averaged over heads and queries; rows to raster."""
    g = torch.Generator().manual_seed(0)
    n, heads, unit = 16, 2, 4
    probs = torch.rand(heads, n, n, generator=g).softmax(-1)
    x = torch.randn(n, 3, generator=g)
    keys = torch.randn(n, heads, 5, generator=g)
    back = torch.tensor([2, 0, 3, 1])  # window row j holds raster token back^-1 …
    out = merged_output(x, probs, keys, back, unit)
    for r in range(4):
        w = int(back[r])  # raster token r is window row w
        patches = range(w * unit, (w + 1) * unit)
        want = sum(float(probs[h, q, p]) for h in range(heads) for q in range(n)
                   for p in patches) / (heads * n)
        assert abs(float(out.score[0, r]) - want) < 1e-5
        torch.testing.assert_close(out.features[0, r], x[w * unit:(w + 1) * unit].reshape(-1))
    assert out.protected == 0


def visionzip_without_cls(feats: torch.Tensor, score: torch.Tensor, metric: torch.Tensor,
                          dominant: int, contextual: int) -> tuple[torch.Tensor, list[int]]:
    """VisionZip with no CLS, written as the reference code's masks (masked_select,
    scatter, isin) over the score a tower without CLS gives — not vtc's op."""
    b, t, _ = feats.shape
    idx = torch.topk(score, dominant, dim=-1).indices
    keep = torch.zeros(b, t, dtype=torch.bool).scatter_(1, idx, True)
    return visionzip_reference.merge(feats, metric, keep, dominant, contextual)


@pytest.mark.parametrize(("t", "dominant", "contextual"), [(16, 3, 1), (256, 54, 10),
                                                            (20, 12, 0)])
def test_visionzip_without_cls_matches_the_reference_masks(t: int, dominant: int,
                                                           contextual: int) -> None:
    g = torch.Generator().manual_seed(t)
    feats = torch.randn(1, t, 8, generator=g)
    score = torch.rand(1, t, generator=g)
    keys = torch.randn(1, t, 6, generator=g)
    ours, idx = select(feats, score, keys, dominant, contextual, protected=0)
    ref, where = visionzip_without_cls(feats, score, keys, dominant, max(contextual, 1))
    k = dominant + contextual
    torch.testing.assert_close(ours, ref[:, :k], rtol=0, atol=1e-6)
    assert idx[0].tolist() == where[:k]


def test_positions_are_hf_get_rope_index(tiny: Any) -> None:
    """The runtime's M-RoPE positions of an uncut prompt are HF's get_rope_index; after
    a cut they are HF's at the kept indices, the text after the image unchanged."""
    geo = _geo(tiny, (112, 140))
    img, v = geo.image_token_id, geo.visual
    ids = [7, 8, geo.vision_start_token_id, *[img] * v, 9, 10, 11]
    t = torch.tensor([ids])
    ref, delta = tiny.model.get_rope_index(t, mm_token_type_ids=(t == img).int(),
                                           image_grid_thw=torch.tensor([[1, 8, 10]]))
    grid = (geo.merged_h, geo.merged_w)
    ours, nxt = mrope.positions(len(ids), 3, np.arange(v), grid)
    assert ours.tolist() == ref.tolist() and nxt == len(ids) + int(delta)
    kept = np.array([0, 4, 7, 19])
    cut_ids = [7, 8, geo.vision_start_token_id, *[img] * 4, 9, 10, 11]
    cut, nxt_cut = mrope.positions(len(cut_ids), 3, kept, grid)
    sel = [0, 1, 2, *(3 + kept).tolist(), *range(3 + v, len(ids))]
    assert cut.tolist() == ref[:, :, sel].tolist() and nxt_cut == nxt


def test_patches_are_the_processors_layout() -> None:
    """The runtime's patches: HF's Qwen2-VL patchify (written here as its torch code
    reads) of the resized, normalised image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (112, 140, 3), dtype=np.uint8))
    proc = {"image_size": [112, 140], "patch": 14, "merge": 2, "temporal_patch": 2,
            "min_pixels": 3136, "max_pixels": 1003520, "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3]}
    ours = mrope.patches(img, proc, False, "img")
    arr = (np.asarray(img, np.float32) / 255 - np.array(proc["mean"], np.float32)) \
        / np.array(proc["std"], np.float32)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    _, c, h, w = x.shape
    gh, gw = h // 14, w // 14
    p = x.reshape(1, c, gh // 2, 2, 14, gw // 2, 2, 14).permute(0, 2, 5, 3, 6, 1, 4, 7)
    flat = p.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, 2, -1, -1).reshape(gh * gw, -1)
    np.testing.assert_allclose(ours, flat.numpy(), rtol=0, atol=1e-6)


def test_an_image_of_another_grid_is_refused_naming_the_built_size() -> None:
    from vtc.runtime import BundleError

    proc = {"image_size": [448, 448], "patch": 14, "merge": 2, "min_pixels": 3136,
            "max_pixels": 1003520}
    mrope.check_size(450, 440, proc, "ok.jpg")  # resizes to 448 × 448: accepted
    with pytest.raises(BundleError) as err:
        mrope.check_size(640, 480, proc, "cat.jpg")
    msg = str(err.value)
    assert "built for 448×448 px (256 merged tokens" in msg
    assert "391 merged visual tokens" in msg and "generate.image_size=[476,644]" in msg


def test_geometry_refuses_encoder_cuts_by_name(tiny: Any) -> None:
    from vtc.budget import BudgetError
    from vtc.recipe import load_recipe
    from vtc.vlm import plan

    geo = _geo(tiny, (112, 112))
    with pytest.raises(BudgetError, match=r"evit\.score=cls ranks tokens by the CLS"):
        plan.plan(load_recipe("evit-keep70", []), geo)
    with pytest.raises(BudgetError, match=r"tome cut.* windowed attention and 2×2"):
        plan.plan(load_recipe("tome-r8", []), geo)
    cuts = plan.plan(load_recipe("qwen2_5_vl-visionzip25", []), geo)
    (step,) = cuts.steps
    assert (step.tokens_in, step.tokens_out, step.params) == (
        16, 4, {"dominant": 3, "contextual": 1})


def test_cut_positions_come_out_of_the_vision_module(tiny: Any) -> None:
    """With VisionZip the module's positions are the kept tokens' raster indices (a
    contextual token its target's), matching the features it keeps."""
    geo = _geo(tiny, (112, 112))
    step = CutStep("visionzip", "projector", 16, 5, None, {"dominant": 4, "contextual": 1})
    uncut = QwenVision(tiny, geo, Cuts(None, (), 16, 16)).eval()
    cut = QwenVision(tiny, geo, Cuts(None, (step,), 5, 5)).eval()
    px = torch.randn(geo.patches, 1176)
    with torch.no_grad():
        full, _ = uncut(px)
        feats, pos = cut(px)
    assert len(set(pos.tolist())) == 5
    torch.testing.assert_close(feats[:4], full[pos[:4]], rtol=0, atol=1e-5)
    assert pos[:4].tolist() == sorted(pos[:4].tolist())
