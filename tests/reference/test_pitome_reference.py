"""Tests of the PiToMe oracle itself (tests/reference/pitome_reference.py), not of ``vtc``.

Tiny seeded models: hidden 64, 3 layers, 4 heads, image 32, patch 8 (16 patches),
intermediate 128, 10 labels; every parameter perturbed with N(0, 0.1) noise so attention
is far from uniform. ViT sequences have 17 tokens (CLS + 16).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tests.reference.models import BUILDERS as _ALL
from tests.reference.models import LABELS, TINY, _hf_output, _pixels, _vit_cls
from tests.reference.pitome_reference import (
    PiToMeBlockTrace,
    block_margins,
    parse_schedule,
    pitome_forward,
    pitome_match,
    pitome_merge,
)

# PiToMe's oracle protects index 0 only: the ViT models.
BUILDERS = {k: v for k, v in _ALL.items() if k.startswith("vit")}

# ---------------------------------------------------------------- (1) r = 0 is the model


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("r", [0, [0, 0, 0]])
def test_r0_equals_hf_forward(kind: str, r: int | list[int]) -> None:
    model = BUILDERS[kind]()
    pixels = _pixels()
    want = _hf_output(model, pixels)
    trace: list[PiToMeBlockTrace] = []
    got = pitome_forward(model, pixels, r, trace=trace)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape
        assert (got[key] - want[key]).abs().max().item() <= 1e-5
    assert all(t.r == 0 and t.tokens_in == t.tokens_out == 17 for t in trace)
    assert all(t.size is None and t.matching is None for t in trace)


def test_merging_changes_the_output() -> None:
    """The perturbation matters: PiToMe with r > 0 moves the logits away from r = 0."""
    model = _vit_cls()
    pixels = _pixels()
    base = pitome_forward(model, pixels, 0)["logits"]
    merged = pitome_forward(model, pixels, 4)["logits"]
    assert (base - merged).abs().max().item() > 1e-3


# ---------------------------------------------------------------- (2) schedules


def test_block_margins() -> None:
    assert block_margins(3) == [0.9, 0.9 - 0.9 * (1 / 3), 0.9 - 0.9 * (2 / 3)]
    assert block_margins(3) == pytest.approx([0.9, 0.6, 0.3])
    assert block_margins(12)[-1] == pytest.approx(0.9 / 12)
    assert block_margins(2, 0.5) == [0.5, 0.25]


def test_parse_schedule() -> None:
    assert parse_schedule(3, 4) == [4, 4, 4]
    assert parse_schedule(3, [1]) == [1, 0, 0]
    assert parse_schedule(3, [1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ValueError):
        parse_schedule(3, [1, 1, 1, 1])
    with pytest.raises(ValueError):
        parse_schedule(3, -1)
    with pytest.raises(ValueError):
        parse_schedule(3, [0, -2])


def _expected_counts(n0: int, schedule: list[int]) -> list[int]:
    """Token count after each block: N -> N - min(r, (N - 1) // 2) (CLS protected)."""
    counts, n = [], n0
    for r in schedule:
        n -= min(r, (n - 1) // 2)
        counts.append(n)
    return counts


@pytest.mark.parametrize(
    ("kind", "r", "counts"),
    [
        ("vit_cls", 1, [16, 15, 14]),
        ("vit_cls", 4, [13, 9, 5]),
        ("vit_cls", 8, [9, 5, 3]),
        ("vit_cls", 100, [9, 5, 3]),
        ("vit_cls", [0, 5, 100], [17, 12, 7]),
        ("vit_cls", [3], [14, 14, 14]),
        ("vit_cls", [0, 4, 0], [17, 13, 13]),
        ("vit_model", 6, [11, 6, 4]),
        ("vit_model_no_pooler", 7, [10, 6, 4]),
    ],
)
def test_token_counts_follow_schedule(kind: str, r: int | list[int], counts: list[int]) -> None:
    model = BUILDERS[kind]()
    schedule = parse_schedule(3, r)
    assert _expected_counts(17, schedule) == counts  # the table is the rule

    batch = 2
    trace: list[PiToMeBlockTrace] = []
    out = pitome_forward(model, _pixels(batch), r, trace=trace)
    assert [t.tokens_out for t in trace] == counts
    assert [t.tokens_in for t in trace] == [17, *counts[:-1]]
    assert [t.r_requested for t in trace] == schedule
    assert all(t.tokens_in - t.tokens_out == t.r for t in trace)
    assert [t.margin for t in trace] == block_margins(3, 0.9)
    merged_yet = False
    for t in trace:
        merged_yet = merged_yet or t.r > 0
        if not merged_yet:
            assert t.size is None
            continue
        assert t.size is not None
        assert t.size.shape == (batch, t.tokens_out, 1)
        # sizes count input patches: they add up to the original sequence length
        torch.testing.assert_close(t.size.sum(dim=1), torch.full((batch, 1), 17.0))
        assert torch.all(t.size[:, :1] == 1)  # CLS is never merged
        assert torch.all(t.size >= 1)
        if t.matching is not None and t.r > 0:
            m = t.matching
            assert m.a_idx.shape == m.b_idx.shape == m.dst_idx.shape == (batch, t.r)
            assert m.keep_idx.shape == (batch, t.tokens_in - 1 - 2 * t.r)
    assert next(iter(out.values())).shape[0] == batch


def test_cls_token_stays_first() -> None:
    """A large marker in channel 0 of the CLS token stays on token 0 through every merge."""
    model = _vit_cls()
    with torch.no_grad():
        model.vit.embeddings.cls_token[0, 0, 0] += 1000.0
    trace: list[PiToMeBlockTrace] = []
    pitome_forward(model, _pixels(), 8, trace=trace)
    for t in trace:
        assert torch.all(t.hidden[:, 0, 0] > 500)
        assert torch.all(t.hidden[:, 1:, 0].abs() < 100)


# ---------------------------------------------------------------- (3) hand-checked merge


def _rows(*vectors: list[float]) -> torch.Tensor:
    """[1, N, D] from N row vectors."""
    return torch.tensor([vectors], dtype=torch.float32)


E1, E2, E3 = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
# CLS + 6 tokens: p1 = e3 (alone), p2 = p5 = e2 (pair), p3 = p4 = p6 = e1 (triple).
# The CLS metric is e2: were it counted, the e2 pair would become a triple and tie the e1
# triple, changing the order below.
HAND_METRIC = _rows(E2, E3, E2, E1, E1, E2, E1)
HAND_X = torch.arange(7, dtype=torch.float32).view(1, 7, 1) * 10.0  # p_i = 10 i


def test_hand_case_energy() -> None:
    """Cosines are 1 inside a group and 0 across, so with m = 0.5 and T = 6 a token in a
    group of k has energy (k·ELU(0.5) + (6 - k)·ELU(-0.5)) / 6 = (k/2 + (6-k)(e^-0.5 - 1))/6.

    Order (stable, ties by index): p3, p4, p6 (k=3), p2, p5 (k=2), p1 (k=1), i.e. indices
    into the non-CLS tokens [2, 3, 5, 1, 4, 0].
    """
    m = pitome_match(HAND_METRIC, 2, margin=0.5)

    def energy(k: int) -> float:
        return (k * 0.5 + (6 - k) * (math.exp(-0.5) - 1.0)) / 6.0

    want = torch.tensor([[energy(1), energy(2), energy(3), energy(3), energy(2), energy(3)]])
    torch.testing.assert_close(m.energy, want)
    assert m.order.tolist() == [[2, 3, 5, 1, 4, 0]]
    assert m.r == 2
    assert m.a_idx.tolist() == [[2, 5]]  # ranks 0, 2: p3, p6
    assert m.b_idx.tolist() == [[3, 1]]  # ranks 1, 3: p4, p2
    assert m.keep_idx.tolist() == [[4, 0]]  # p5, p1 in energy order
    assert m.dst_idx.tolist() == [[0, 0]]  # both p3 and p6 pick p4 (cos 1 vs 0)


def test_hand_case_merge_r2() -> None:
    """r = 2: candidates p3, p4, p6, p2; A = {p3, p6}, B = {p4, p2}; p3 and p6 both merge
    into p4. Output [p0, p5, p1, (p3+p4+p6)/3, p2] = [CLS, protected..., B...]."""
    y, size = pitome_merge(HAND_X, None, HAND_METRIC, 2, margin=0.5)
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0, 50.0, 10.0, 130.0 / 3.0, 20.0]))
    assert size.flatten().tolist() == [1.0, 1.0, 1.0, 3.0, 1.0]


def test_hand_case_merge_r1_r3_and_clip() -> None:
    """r = 1: p3 into p4; protected p6, p2, p5, p1 in energy order.
    r = 3: A = {p3, p6, p5}, B = {p4, p2, p1}; p3, p6 → p4, p5 → p2.
    r = 4 is clipped to 6 // 2 = 3."""
    y, size = pitome_merge(HAND_X, None, HAND_METRIC, 1, margin=0.5)
    assert y.flatten().tolist() == [0.0, 60.0, 20.0, 50.0, 10.0, 35.0]
    assert size.flatten().tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 2.0]
    for r in (3, 4):
        m = pitome_match(HAND_METRIC, r, margin=0.5)
        assert m.r == 3 and m.dst_idx.tolist() == [[0, 0, 1]]
        assert m.keep_idx.shape == (1, 0)
        y, size = pitome_merge(HAND_X, None, HAND_METRIC, r, margin=0.5)
        torch.testing.assert_close(y.flatten(), torch.tensor([0.0, 130.0 / 3.0, 35.0, 10.0]))
        assert size.flatten().tolist() == [1.0, 3.0, 2.0, 1.0]


def test_hand_case_size_weighted() -> None:
    """Incoming sizes [1, 1, 2, 1, 3, 1, 1]: the merged token is (1·30 + 3·40 + 1·60) / 5;
    sizes still add up to 10; the other rows keep their values."""
    size_in = torch.tensor([1.0, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0]).view(1, 7, 1)
    y, size = pitome_merge(HAND_X, size_in, HAND_METRIC, 2, margin=0.5)
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0, 50.0, 10.0, 42.0, 20.0]))
    assert size.flatten().tolist() == [1.0, 1.0, 1.0, 5.0, 2.0]
    assert size.sum().item() == size_in.sum().item()


def test_margin_changes_the_order() -> None:
    """The ELU margin is not cosmetic. p1 = p2 = (1, 0), p3 = p4 = (-1, 0), p5 = (0, 1).

    m = -1: ELU is the identity on S + 1 >= 0, so E = 1 + mean cosine: p1..p4 get
    1 + (1 + 1 - 1 - 1 + 0)/5 = 1.0, p5 gets 1 + (0·4 + 1)/5 = 1.2, so p5 ranks first and
    (r = 1) merges into p1, the first of the tied rest.
    m = 0.9: p1 gets (2·0.1 + 2(e^-1.9 - 1) + (e^-0.9 - 1))/5 = -0.419, p5 gets
    (0.1 + 4(e^-0.9 - 1))/5 = -0.455: the duplicate pairs (tied, index order) beat p5, and
    r = 1 merges p1 into p2.
    """
    metric = _rows([0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, 1.0])
    low = pitome_match(metric, 1, margin=-1.0)
    assert low.order.tolist() == [[4, 0, 1, 2, 3]]
    cos = metric[0, 1:]
    torch.testing.assert_close(low.energy, (cos @ cos.T).mean(-1)[None] + 1.0)
    assert low.a_idx.tolist() == [[4]] and low.b_idx.tolist() == [[0]]
    high = pitome_match(metric, 1, margin=0.9)
    e = math.exp
    torch.testing.assert_close(
        high.energy[0, [0, 4]],
        torch.tensor([(0.2 + 2 * (e(-1.9) - 1) + e(-0.9) - 1) / 5, (0.1 + 4 * (e(-0.9) - 1)) / 5]),
    )
    assert high.order.tolist() == [[0, 1, 2, 3, 4]]
    assert high.a_idx.tolist() == [[0]] and high.b_idx.tolist() == [[1]]


def test_energy_ties_are_stable() -> None:
    """CLS + 8 identical tokens: all energies tie, so the order is the index order; A = even
    indices, B = odd; every A token picks B[0] (first maximum)."""
    metric = torch.cat([torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 8, 2)], dim=1)
    m = pitome_match(metric, 3, margin=0.9)
    assert m.order.tolist() == [list(range(8))]
    assert m.a_idx.tolist() == [[0, 2, 4]]
    assert m.b_idx.tolist() == [[1, 3, 5]]
    assert m.keep_idx.tolist() == [[6, 7]]
    assert m.dst_idx.tolist() == [[0, 0, 0]]
    x = torch.arange(9, dtype=torch.float32).view(1, 9, 1)
    y, size = pitome_merge(x, None, metric, 3, margin=0.9)
    # [CLS, p7, p8, (p1+p2+p3+p5)/4, p4, p6]
    assert y.flatten().tolist() == [0.0, 7.0, 8.0, 2.75, 4.0, 6.0]
    assert size.flatten().tolist() == [1.0, 1.0, 1.0, 4.0, 1.0, 1.0]


def test_r_zero_and_protected_zero() -> None:
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    metric = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    y, size = pitome_merge(x, None, metric, 0, margin=0.9)
    assert torch.equal(y, x) and torch.equal(size, torch.ones(2, 5, 1))
    y, size = pitome_merge(x[:, :2], None, metric[:, :2], 3, margin=0.9)  # T = 1: clipped
    assert torch.equal(y, x[:, :2])
    # P = 0: all 5 tokens compete; 2 merges leave 3 tokens of total size 5.
    y, size = pitome_merge(x, None, metric, 2, margin=0.9, protected=0)
    assert y.shape == (2, 3, 3) and size.sum(dim=1).flatten().tolist() == [5.0, 5.0]
    with pytest.raises(ValueError):
        pitome_match(metric, -1, margin=0.9)


# ---------------------------------------------------------------- (4) brute force


def _naive_merge(
    x: list[list[float]],
    size: list[float],
    metric: list[list[float]],
    r: int,
    margin: float,
    alpha: float,
    protected: int,
) -> tuple[list[list[float]], list[float]]:
    """PiToMe on one image, in plain Python floats, straight from the algorithm text."""
    feats = metric[protected:]
    t = len(feats)
    r = min(r, t // 2)
    units = [[v / max(math.sqrt(sum(u * u for u in f)), 1e-12) for v in f] for f in feats]
    cos = [[sum(a * b for a, b in zip(u, w, strict=True)) for w in units] for u in units]

    def elu(z: float) -> float:
        return z if z > 0 else alpha * (math.exp(z) - 1.0)

    energy = [sum(elu(c - margin) for c in row) / t for row in cos]
    order = sorted(range(t), key=lambda i: -energy[i])  # Python's sort is stable
    a_set, b_set, keep = order[0 : 2 * r : 2], order[1 : 2 * r : 2], order[2 * r :]
    rest_x, rest_s = x[protected:], size[protected:]
    acc_x = [[v * rest_s[j] for v in rest_x[j]] for j in b_set]
    acc_s = [rest_s[j] for j in b_set]
    for i in a_set:
        row = [cos[i][j] for j in b_set]
        k = row.index(max(row))  # first maximum
        acc_x[k] = [a + v * rest_s[i] for a, v in zip(acc_x[k], rest_x[i], strict=True)]
        acc_s[k] += rest_s[i]
    out_x = [list(v) for v in x[:protected]] + [list(rest_x[j]) for j in keep]
    out_x += [[v / s for v in vs] for vs, s in zip(acc_x, acc_s, strict=True)]
    out_s = list(size[:protected]) + [rest_s[j] for j in keep] + acc_s
    return out_x, out_s


@pytest.mark.parametrize(
    ("r", "margin", "alpha", "protected"),
    [(1, 0.9, 1.0, 1), (4, 0.9, 1.0, 1), (6, 0.3, 1.0, 1), (5, 0.6, 0.5, 1), (3, 0.0, 1.0, 0)],
)
def test_matches_brute_force(r: int, margin: float, alpha: float, protected: int) -> None:
    """Random clustered metrics, random sizes, batch 3, float64: equal to the naive loop."""
    gen = torch.Generator().manual_seed(100 + r)
    n, d, c = 13, 5, 4
    centres = torch.randn(3, d, generator=gen, dtype=torch.float64)
    pick = torch.randint(0, 3, (3, n), generator=gen)
    metric = centres[pick] + 0.4 * torch.randn(3, n, d, generator=gen, dtype=torch.float64)
    x = torch.randn(3, n, c, generator=gen, dtype=torch.float64)
    size = torch.randint(1, 4, (3, n, 1), generator=gen).to(torch.float64)
    y, s = pitome_merge(x, size, metric, r, margin, alpha, protected)
    for b in range(3):
        want_x, want_s = _naive_merge(
            x[b].tolist(), size[b, :, 0].tolist(), metric[b].tolist(), r, margin, alpha, protected
        )
        torch.testing.assert_close(y[b], torch.tensor(want_x, dtype=torch.float64))
        assert s[b, :, 0].tolist() == want_s
        assert s[b].sum().item() == size[b].sum().item()


# ---------------------------------------------------------------- (5) whole-model properties


def test_block0_against_hf_modules() -> None:
    """Block 0 rebuilt from the HF layer's own modules (hooks capture the embeddings, the
    attention output and the keys): attention residual, PiToMe merge on the head-averaged
    keys with m_0 = 0.9, then the HF MLP residual, equals the oracle's trace."""
    model = _vit_cls()
    layer = model.vit.layers[0]
    pixels = _pixels()
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen[name] = out[0] if isinstance(out, tuple) else out
            seen[name + ".in"] = args[0] if args else seen.get(name + ".in", torch.empty(0))

        return hook

    handles = [
        layer.attention.register_forward_hook(keep("attn")),
        layer.attention.k_proj.register_forward_hook(keep("k")),
        model.vit.embeddings.register_forward_hook(keep("emb")),
    ]
    try:
        with torch.no_grad():
            model(pixel_values=pixels)
    finally:
        for h in handles:
            h.remove()
    emb, attn, k = seen["emb"], seen["attn"], seen["k"]
    b, n, _ = emb.shape
    metric = k.view(b, n, 4, 16).mean(dim=2)  # [B, N, D]: keys averaged over heads
    with torch.no_grad():
        x, _ = pitome_merge(emb + attn, None, metric, 5, 0.9)
        x = x + layer.mlp(layer.layernorm_after(x))
    trace: list[PiToMeBlockTrace] = []
    pitome_forward(model, pixels, [5], trace=trace)
    assert trace[0].hidden.shape == x.shape == (2, 12, 64)
    assert (trace[0].hidden - x).abs().max().item() <= 1e-5


def test_proportional_attention_makes_duplicate_merging_exact() -> None:
    """Merging exact duplicates with size-weighted average + proportional attention changes
    nothing: softmax with a log(s) bias on one key equals s copies of that key.

    A constant image and equal patch position embeddings make all 16 patch tokens identical
    in every block, so every merge is between duplicates.
    """
    model = _vit_cls()
    with torch.no_grad():
        pos = model.vit.embeddings.position_embeddings
        pos[:, 1:] = pos[:, 1:2].clone()
    pixels = torch.full((1, 3, 32, 32), 0.3)
    base = pitome_forward(model, pixels, 0)["logits"]
    for r in (1, 4, 8):
        merged = pitome_forward(model, pixels, r, prop_attn=True)["logits"]
        assert (merged - base).abs().max().item() <= 1e-5
    no_prop = pitome_forward(model, pixels, 8, prop_attn=False)["logits"]
    assert (no_prop - base).abs().max().item() > 1e-3


def test_margin_and_alpha_reach_the_blocks() -> None:
    model = _vit_cls()
    pixels = _pixels()
    trace: list[PiToMeBlockTrace] = []
    pitome_forward(model, pixels, 4, margin=0.5, alpha=0.5, trace=trace)
    assert [t.margin for t in trace] == block_margins(3, 0.5)
    assert all(t.matching is not None and t.matching.alpha == 0.5 for t in trace)
    assert all(t.matching is not None and t.matching.margin == t.margin for t in trace)


def test_batch_rows_are_independent() -> None:
    """Matching is per image: a batch equals its images run one by one."""
    model = _vit_cls()
    pixels = _pixels(3, seed=11)
    batched = pitome_forward(model, pixels, 4)["logits"]
    single = torch.cat([pitome_forward(model, pixels[i : i + 1], 4)["logits"] for i in range(3)])
    assert (batched - single).abs().max().item() <= 1e-5


def test_rejected_inputs() -> None:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    with pytest.raises(ValueError):
        pitome_forward(_vit_cls().train(), _pixels(), 1)
    with pytest.raises(ValueError):
        pitome_forward(_vit_cls(), _pixels(), [1, 1, 1, 1])
    deit = DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, **LABELS)).eval()
    with pytest.raises(TypeError):
        pitome_forward(deit, _pixels(), 1)
