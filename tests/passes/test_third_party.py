"""The passes on a graph vtc's exporters never wrote: a hand-written ViT in the
style of the timm / DINOv2 reference code (fused qkv Linear, a [B, N, 3, H, D]
reshape, unbind, LayerScale, tanh GELU), exported by both torch exporters.
Its eager forward applies the same budget with vtc's eager reduction
functions, so parity is checked against an independent implementation here
too."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.budgets import budget as chain
from tests.budgets import evit_budget, no_budget, pitome_budget, tome_budget
from vtc import methods
from vtc.budget import Budget, Geometry
from vtc.passes import load
from vtc.stages.compress import rewrite as compress

DIM, HEADS, DEPTH, GRID = 48, 3, 3, 4  # 16 patches + CLS = 17 tokens


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.gamma1 = nn.Parameter(torch.full((DIM,), 0.7))
        self.gamma2 = nn.Parameter(torch.full((DIM,), 0.9))

    def forward(self, x: torch.Tensor, budget: Budget | None = None, i: int = 0,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * (c // HEADS) ** -0.5) @ k.transpose(-2, -1)
        if sizes is not None and budget is not None and budget.layers[i].attn_bias:
            attn = attn + sizes.log()[:, None, None, :, 0]
        attn = attn.softmax(dim=-1)
        x = x + self.gamma1 * self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        if budget is not None and budget.layers[i].method != "none":
            plan = budget.layers[i]
            x, sizes = methods.get(plan.method).eager(x, sizes, k, attn, plan, budget.protected)
        x = x + self.gamma2 * self.fc2(nn.functional.gelu(self.fc1(self.norm2(x)),
                                                          approximate="tanh"))
        return x, sizes


class TinyTimmViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, GRID * GRID + 1, DIM) * 0.5)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, 7)
        self.budget: Budget | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        sizes = None
        for i, blk in enumerate(self.blocks):
            x, sizes = blk(x, self.budget, i, sizes)
        return self.head(self.norm(x)[:, 0])


GEO = Geometry(tokens=17, protected=1, width=DIM, mlp_width=2 * DIM, layers=DEPTH)


@pytest.fixture(scope="module")
def model() -> TinyTimmViT:
    torch.manual_seed(0)
    m = TinyTimmViT().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def onnx_path(request: pytest.FixtureRequest, model: TinyTimmViT,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("timm") / f"{request.param}.onnx"
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if request.param == "dynamo":
            torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False,
                              input_names=["pixel_values"]).save(str(path))  # type: ignore[union-attr]
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["pixel_values"])
    return path


@pytest.mark.parametrize("budget", [
    no_budget(GEO), tome_budget(GEO, r=[4, 3, 2]), evit_budget(GEO, 0.5, [0, 1]),
    evit_budget(GEO, 0.6, [1], fuse="mean"), pitome_budget(GEO, r=[4, 3, 2]),
    chain(GEO, ("pitome", {"r": 4, "layers": [0]}), ("tome", {"r": 3, "layers": [1]}),
          ("evit", {"keep_rate": 0.5, "layers": [2]})),
], ids=["none", "tome", "evit", "evit-mean", "pitome", "pitome+tome+evit"])
def test_fused_qkv_graph_matches_eager(model: TinyTimmViT, onnx_path: Path,
                                       budget: Budget) -> None:
    m = load(onnx_path)
    compress(m, budget)
    sess = ort.InferenceSession(ir.to_proto(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    model.budget = budget
    try:
        with torch.no_grad():
            want = model(x).numpy()
    finally:
        model.budget = None
    assert np.abs(got - want).max() <= 1e-4
