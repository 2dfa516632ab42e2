"""PyTorch's own attention modules through vtc (issue 10, items 2 and 4).

Encoders built from `nn.MultiheadAttention` (batch-first and sequence-first, with and
without `need_weights`) and `nn.TransformerEncoderLayer` (pre- and post-norm), exported
by both exporters: their attention runs over `[B·H, N, N]` or `[B, H, N, N]`, the
sequence-first ones fold the tokens with the batch (`[N·B, C] → [N, B, C]`), and
their output is the token sequence. Every registered method rewrites them; the
compressed engine is held to an eager reference (ToMe) or to the uncompressed engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from tests.torch_encoders import DEPTH, HEADS, SPECS, Encoder, export
from vtc import methods, passes
from vtc.budget import Budget
from vtc.cli import export_main
from vtc.methods.tome import first_set, tome_merge
from vtc.recipe import RecipeBase, load_recipe
from vtc.stages.compress import rewrite
from vtc.stages.load import onnx_geometry

# A light budget per method: one reduction site in the last block but one.
LIGHT = {"tome": ["tome.r=2", "tome.layers=[1]"], "pitome": ["pitome.r=2", "pitome.layers=[1]"],
         "evit": ["evit.keep_rate=0.8", "evit.layers=[1]"]}
RECIPES = {"tome": "tome-r8", "pitome": "pitome-r8", "evit": "evit-keep70"}


class Exports:
    """Each (variant, exporter, batch) exported once per module."""

    def __init__(self, root: Path) -> None:
        self.root, self.paths, self.models = root, {}, {}  # type: ignore[var-annotated]

    def model(self, variant: str) -> Encoder:
        if variant not in self.models:
            self.models[variant] = Encoder(SPECS[variant])
        return self.models[variant]  # type: ignore[no-any-return]

    def path(self, variant: str, dynamo: bool, batch: int) -> Path:
        key = (variant, dynamo, batch)
        if key not in self.paths:
            d = self.root / f"{variant}-{'dynamo' if dynamo else 'ts'}-b{batch}"
            d.mkdir()
            self.paths[key] = export(self.model(variant), d / "enc.onnx", batch, dynamo)
        return self.paths[key]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    return Exports(tmp_path_factory.mktemp("torch-attention"))


def _pixels(batch: int, seed: int = 3, variant: str = "mha-bf") -> np.ndarray:
    s = SPECS[variant]
    return np.random.default_rng(seed).standard_normal(
        (batch, s.channels, s.height, s.width)).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"pixel_values": x}),
                    strict=True))


def _recipe(method: str, extra: list[str]) -> RecipeBase:
    return load_recipe(RECIPES[method], [*LIGHT[method], *extra])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# every variant through dynamo; the two the CLI test exports through TorchScript too
LIBRARY = [(v, True) for v in SPECS] + [("mha-bf", False), ("tel-post-sf", False)]


@pytest.mark.parametrize(("variant", "dynamo"), LIBRARY,
                         ids=[f"{v}-{'dynamo' if d else 'torchscript'}" for v, d in LIBRARY])
def test_every_method_rewrites_the_graph(exports: Exports, tmp_path: Path, variant: str,
                                         dynamo: bool) -> None:
    """Blocks found in the module's own layout; every method reduces the tokens; the
    unmerged output keeps N tokens close to the uncompressed ones, the merged one has N'
    tokens whose sizes add up to N."""
    spec, batch = SPECS[variant], 8
    src = exports.path(variant, dynamo, batch)
    x = _pixels(batch, variant=variant)
    base = _run(src, x)["tokens"]
    prepared = ir.to_proto(passes.load(src, batch))  # each rewrite gets a fresh copy
    blocks = passes.find_blocks(ir.from_proto(prepared))
    assert len(blocks) == DEPTH and {b.heads for b in blocks} == {HEADS}
    assert {b.seq_first for b in blocks} == {not spec.batch_first}
    for method in [n for n in methods.names() if methods.get(n).site == "encoder"]:
        # prunes cannot fill a full-length output; tome runs both ways
        modes = ["merged"] if not methods.get(method).merges else (
            ["unmerge", "merged"] if method == "tome" else ["unmerge"])
        for mode in modes:
            model = ir.from_proto(prepared)
            # no CLS token: EViT must be told to rank by the mean attention received
            extra = ["evit.score=mean"] if method == "evit" and not spec.cls else []
            budget = _recipe(method, extra).budget(onnx_geometry(model, None))
            assert budget.tokens_out < budget.tokens_in
            info = rewrite(model, budget, "auto", mode)
            assert info.sites == 1 and info.tokens_out is not None
            assert info.tokens_out.mode == mode
            path = tmp_path / f"{method}-{mode}.onnx"
            passes.model_io.save_model(model, path)
            out = _run(path, x)
            n = budget.tokens_in
            if mode == "unmerge":
                assert out["tokens"].shape == base.shape
                assert _cos(out["tokens"], base).mean() > 0.9, (method, mode)
            else:
                assert out["tokens"].shape == (batch, budget.tokens_out, base.shape[-1])
                np.testing.assert_allclose(out["token_sizes"].sum(1), n, rtol=1e-5)


def _eager_tome(enc: Encoder, x: torch.Tensor, budget: Budget) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """ToMe on the batch-first nn.MultiheadAttention encoder, in torch: keys from the
    packed in_proj averaged over heads, proportional attention as an additive mask."""
    t = enc.embed(x)
    sizes = torch.ones(t.shape[0], t.shape[1], 1)
    for blk, plan in zip(enc.blocks, budget.layers, strict=True):
        b, n, c = t.shape
        h = blk.n1(t)
        mask = None
        if plan.attn_bias:
            bias = sizes.log().transpose(1, 2)[:, None].expand(b, HEADS, n, n)
            mask = bias.reshape(b * HEADS, n, n)
        t = t + blk.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        if plan.method == "tome":
            w, bias_k = blk.attn.in_proj_weight[c:2 * c], blk.attn.in_proj_bias[c:2 * c]
            keys = (h @ w.T + bias_k).view(b, n, HEADS, c // HEADS).mean(2)
            t, sizes = tome_merge(t, sizes, keys, int(plan.params["r"]), budget.protected,
                                  first_set(budget.protected, "inside"))
        t = t + blk.mlp(blk.n2(t))
    return enc.norm(t), sizes[..., 0]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_engine_parity_with_an_eager_reference(exports: Exports, tmp_path: Path,
                                               dynamo: bool) -> None:
    """ToMe (r=2 in every block, proportional attention) kept merged: the engine's tokens
    and token_sizes match the eager reference; the sequence-first twin of the same
    weights (need_weights=True, [B·H, N, N] attention) gives the same graph output."""
    batch, x = 8, _pixels(8)
    recipe = load_recipe("tome-r8", ["tome.r=2"])
    outs = []
    for variant in ("mha-bf", "mha-sf-weights"):
        model = passes.load(exports.path(variant, dynamo, batch), batch)
        budget = recipe.budget(onnx_geometry(model, None))
        rewrite(model, budget, "auto", "merged")
        passes.model_io.save_model(model, tmp_path / f"{variant}.onnx")
        outs.append(_run(tmp_path / f"{variant}.onnx", x))
    with torch.no_grad():
        tokens, sizes = _eager_tome(exports.model("mha-bf"), torch.from_numpy(x), budget)
    assert budget.tokens_out == 17 - 2 * DEPTH
    for out in outs:
        np.testing.assert_allclose(out["tokens"], tokens.numpy(), atol=2e-4, rtol=1e-3)
        np.testing.assert_array_equal(out["token_sizes"], sizes.numpy())


def _cli(src: Path, out: Path, batch: int, *sets: str) -> tuple[int, str]:
    args = [str(src), "--batch", str(batch), "--out", str(out), "--no-bench",
            "--set", "validate.samples=8"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(export_main, args)
    return res.exit_code, res.output


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("variant", ["mha-bf", "tel-post-sf", "mha-gray-wide"])
def test_vtc_export_end_to_end(exports: Exports, tmp_path: Path, variant: str, dynamo: bool,
                               batch: int) -> None:
    """vtc-export on the exported file (dynamo: with its .onnx.data beside it): exit 0,
    the bundle's engine runs, report.json says what became of the token output.
    `mha-gray-wide` is the issue's encoder in small (1×16×64, no CLS): every route
    that failed there (external data, [B·H, N, N] attention, sequence-first reshapes,
    validation inputs of the wrong shape) runs."""
    src = exports.path(variant, dynamo, batch)
    merged = batch == 8  # one of each per variant and exporter
    code, text = _cli(src, tmp_path / "b", batch, *LIGHT["tome"],
                      f"tokens_out={'merged' if merged else 'unmerge'}")
    assert code == 0, text
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    tok = report["graph"]["tokens_out"]
    assert tok["mode"] == ("merged" if merged else "unmerge") and tok["outputs"] == ["tokens"]
    assert report["budget"]["tokens_out"] < report["budget"]["tokens_in"]
    assert report["fidelity"]["basis"] == "token" and report["fidelity"]["cosine_mean"] > 0.9
    out = _run(tmp_path / "b" / "model.ort.onnx", _pixels(batch, variant=variant))
    spec = SPECS[variant]
    assert report["inputs"]["preprocess"]["channels"] == spec.channels
    assert [report["inputs"]["preprocess"][k] for k in ("height", "width")] == [spec.height,
                                                                              spec.width]
    assert out["tokens"].shape[1] == (tok["tokens"])
    assert ("token_sizes" in out) == merged
    files = json.loads((tmp_path / "b" / "manifest.json").read_text())["files"]
    assert set(files) == {"baseline.onnx", "model.onnx", "model.ort.onnx",
                          "config.json", "preprocessor_config.json", "preprocess.json"}


def test_evit_token_output_needs_merged(exports: Exports, tmp_path: Path) -> None:
    """A prune cannot fill a full-length token output: one line naming tokens_out;
    kept merged it runs, with pooled fidelity."""
    src = exports.path("mha-bf", True, 8)
    code, text = _cli(src, tmp_path / "bad", 8, *LIGHT["evit"], "method=evit")
    assert code == 2 and "set tokens_out: merged" in text.splitlines()[-1]
    assert not (tmp_path / "bad").exists()
    code, text = _cli(src, tmp_path / "ok", 8, *LIGHT["evit"], "method=evit",
                      "tokens_out=merged")
    assert code == 0, text
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["fidelity"]["basis"] == "pooled"
    assert report["graph"]["tokens_out"]["sizes_output"] == "token_sizes"
