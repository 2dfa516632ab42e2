"""Unmerge before a dense (grid) consumer: a tiny ViT with a conv head on the patch grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from tests.budgets import budget as chain
from tests.budgets import evit_budget, pitome_budget, tome_budget
from tests.conftest import tiny_vit
from vtc.budget import Geometry
from vtc.exporter import get_family
from vtc.exporter.eager import reference_tokens
from vtc.passes import GraphError, load
from vtc.passes.unmerge import find_grid_consumer
from vtc.stages.compress import rewrite as compress

GEO = Geometry(tokens=17, protected=1, width=64, mlp_width=128, layers=3)


class GridHead(torch.nn.Module):
    """ViT tokens → final LN → drop CLS → [B, C, 4, 4] grid → conv → upsampled map.

    `twist` puts a CumSum (an op the grid search cannot see through) before the grid."""

    def __init__(self, vit: torch.nn.Module, twist: bool = False) -> None:
        super().__init__()
        self.vit, self.twist = vit, twist
        self.conv = torch.nn.Conv2d(64, 2, 3, padding=1)

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 17, 64] (after the last block) → map [B, 2, 8, 8]."""
        h = self.vit.vit.layernorm(tokens)[:, 1:]
        if self.twist:
            h = h.cumsum(dim=-1)
        grid = h.transpose(1, 2).reshape(h.shape[0], 64, 4, 4)
        return torch.nn.functional.interpolate(self.conv(grid), scale_factor=2.0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vit.vit(pixel_values).last_hidden_state  # after the final LN already
        h = out[:, 1:]
        if self.twist:
            h = h.cumsum(dim=-1)
        grid = h.transpose(1, 2).reshape(h.shape[0], 64, 4, 4)
        return torch.nn.functional.interpolate(self.conv(grid), scale_factor=2.0)


def _export(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), dynamo=True,
                                 opset_version=18, input_names=["pixel_values"],
                                 output_names=["saliency"], verbose=False)
    assert prog is not None
    prog.save(str(path))
    return path


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[GridHead, Path]:
    torch.manual_seed(0)
    model = GridHead(tiny_vit()).eval()
    return model, _export(model, tmp_path_factory.mktemp("dense") / "dense.onnx")


def _run(m: ir.Model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_grid_consumer_found(dense: tuple[GridHead, Path]) -> None:
    m = load(dense[1])
    from vtc.passes import find_blocks

    search = find_grid_consumer(find_blocks(m)[-1].x_out)
    assert [n.op_type for n in search.consumers] == ["Reshape"]
    assert not search.blockers


UNMERGE_BUDGETS = {
    "tome-2-2-2": tome_budget(GEO, r=[2, 2, 2]),
    "tome-4-0-3": tome_budget(GEO, r=[4, 0, 3]),
    "tome-8": tome_budget(GEO, r=8),
    "tome-outside": tome_budget(GEO, r=[3, 2, 2], protected="outside"),
    "pitome-3-2-2": pitome_budget(GEO, r=[3, 2, 2]),
    "pitome-8": pitome_budget(GEO, r=8),
    "pitome+tome": chain(GEO, ("pitome", {"r": 3, "layers": [0, 2]}),
                         ("tome", {"r": 4, "layers": [1]})),
}


@pytest.mark.parametrize("name", list(UNMERGE_BUDGETS))
def test_unmerged_engine_matches_eager(dense: tuple[GridHead, Path], pixels: np.ndarray,
                                       name: str) -> None:
    model, path = dense
    budget = UNMERGE_BUDGETS[name]
    assert budget.tokens_out < 17
    m = load(path)
    res = compress(m, budget)
    assert res.unmerge is not None and res.unmerge.tokens == 17
    got = _run(m, pixels)
    with torch.no_grad():
        toks = reference_tokens(get_family("vit"), model.vit, torch.from_numpy(pixels), budget,
                                unmerge_tokens=True)
        want = model.tokens_to_map(toks).numpy()
    assert got.shape == want.shape == (2, 2, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # merging really happened: the unmerged map differs from the uncompressed model's
    assert np.abs(_run(load(path), pixels) - got).max() > 1e-3


def test_unmerged_tokens_are_copies(dense: tuple[GridHead, Path], pixels: np.ndarray) -> None:
    """Every original position holds the merged token it went into: only N_L distinct rows."""
    model, _ = dense
    budget = tome_budget(GEO, r=4)
    with torch.no_grad():
        toks = reference_tokens(get_family("vit"), model.vit, torch.from_numpy(pixels), budget,
                                unmerge_tokens=True)
    assert toks.shape == (2, 17, 64)
    for b in range(2):
        assert len(np.unique(toks[b].numpy().round(5), axis=0)) == budget.tokens_out


def test_never_unmerge_names_the_grid_reshape(dense: tuple[GridHead, Path]) -> None:
    with pytest.raises(GraphError, match="splits the token axis"):
        compress(load(dense[1]), tome_budget(GEO, r=2), unmerge="never")


def test_evit_refuses_a_grid_consumer(dense: tuple[GridHead, Path]) -> None:
    with pytest.raises(GraphError, match="evit's dropped tokens cannot fill; use a merge"):
        compress(load(dense[1]), evit_budget(GEO, 0.5, [1]))
    with pytest.raises(GraphError, match="evit's dropped tokens"):  # also inside a chain
        compress(load(dense[1]), chain(GEO, ("tome", {"r": 2, "layers": [0]}),
                                       ("evit", {"keep_rate": 0.5, "layers": [1]})))


def test_blocked_search_names_the_node(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _export(GridHead(tiny_vit(), twist=True).eval(), tmp_path / "twist.onnx")
    with pytest.raises(GraphError, match="stopped at CumSum"):
        compress(load(path), tome_budget(GEO, r=2))


def test_no_unmerge_for_a_token_head(vit_onnx: Path) -> None:
    res = compress(load(vit_onnx), tome_budget(GEO, r=2))
    assert res.unmerge is None
