"""Tests of the ToMe oracle itself (tests/reference/tome_reference.py), not of ``vtc``.

Tiny seeded models: hidden 64, 3 layers, 4 heads, image 32, patch 8 (16 patches),
intermediate 128, 10 labels; every parameter perturbed with N(0, 0.1) noise so attention
is far from uniform. ViT sequences have 17 tokens (CLS + 16), DeiT 18 (CLS + distill + 16).
"""

from __future__ import annotations

import pytest
import torch

from tests.reference.models import (
    BUILDERS,
    _deit_teacher,
    _dinov2_model,
    _hf_output,
    _pixels,
    _vit_cls,
)
from tests.reference.tome_reference import (
    BlockTrace,
    bipartite_soft_matching,
    merge_wavg,
    parse_r,
    tome_forward,
)

# ---------------------------------------------------------------- (1) r = 0 is the model


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("r", [0, [0, 0, 0]])
def test_r0_equals_hf_forward(kind: str, r: int | list[int]) -> None:
    model = BUILDERS[kind]()
    pixels = _pixels()
    want = _hf_output(model, pixels)
    trace: list[BlockTrace] = []
    got = tome_forward(model, pixels, r, trace=trace)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].shape == want[key].shape
        assert (got[key] - want[key]).abs().max().item() <= 1e-5
    assert all(t.r == 0 and t.tokens_in == t.tokens_out for t in trace)
    assert all(t.size is None for t in trace)


def test_r0_nonuniform_attention_guard() -> None:
    """The perturbation matters: ToMe with r > 0 moves the logits away from r = 0."""
    model = _vit_cls()
    pixels = _pixels()
    base = tome_forward(model, pixels, 0)["logits"]
    merged = tome_forward(model, pixels, 4)["logits"]
    assert (base - merged).abs().max().item() > 1e-3


# ---------------------------------------------------------------- (2) token schedule


def _expected_counts(n0: int, protected: int, schedule: list[int]) -> list[int]:
    """Token count after each block: N -> N - min(r, (N - protected) // 2) when r > 0."""
    counts, n = [], n0
    for r in schedule:
        if r > 0:
            n -= max(0, min(r, (n - protected) // 2))
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
        ("vit_model", 6, [11, 6, 4]),
        ("deit_teacher", 4, [14, 10, 6]),
        ("deit_teacher", 8, [10, 6, 4]),
        ("deit_teacher", [8, 0, 8], [10, 10, 6]),
        ("deit_model", 3, [15, 12, 9]),
        ("dinov2_model", 4, [13, 9, 5]),
        ("dinov2_swiglu", [0, 5, 100], [17, 12, 7]),
    ],
)
def test_token_counts_follow_schedule(kind: str, r: int | list[int], counts: list[int]) -> None:
    model = BUILDERS[kind]()
    protected = 2 if kind.startswith("deit") else 1
    n0 = 16 + protected
    schedule = parse_r(3, r)
    assert _expected_counts(n0, protected, schedule) == counts  # the table is the rule

    batch = 2
    trace: list[BlockTrace] = []
    out = tome_forward(model, _pixels(batch), r, trace=trace)
    assert [t.tokens_out for t in trace] == counts
    assert [t.tokens_in for t in trace] == [n0, *counts[:-1]]
    assert all(t.tokens_in - t.tokens_out == t.r for t in trace)
    for t in trace:
        if t.size is None:
            continue
        assert t.size.shape == (batch, t.tokens_out, 1)
        # sizes count input patches: they add up to the original sequence length
        torch.testing.assert_close(t.size.sum(dim=1), torch.full((batch, 1), float(n0)))
        # the protected tokens are never merged and stay in front
        assert torch.all(t.size[:, :protected] == 1)
    assert next(iter(out.values())).shape[0] == batch


def test_deit_distill_token_stays_at_index_1() -> None:
    """After every merge, token 0 is CLS and token 1 the distillation token.

    Both are tagged with a large marker in one channel (CLS: channel 1, distillation:
    channel 0) that the residual stream carries through all blocks; the merged patch
    tokens never reach that magnitude.
    """
    model = _deit_teacher()
    with torch.no_grad():
        emb = model.deit.embeddings
        emb.cls_token[0, 0, 1] += 1000.0
        emb.distillation_token[0, 0, 0] += 1000.0
    trace: list[BlockTrace] = []
    tome_forward(model, _pixels(), 8, trace=trace)
    for t in trace:
        assert t.size is not None
        assert torch.all(t.size[:, :2] == 1)
        assert torch.all(t.hidden[:, 0, 1] > 500) and torch.all(t.hidden[:, 1, 0] > 500)
        assert torch.all(t.hidden[:, 2:, :2].abs() < 100)
        assert torch.all(t.hidden[:, 0, 0].abs() < 100)
        assert torch.all(t.hidden[:, 1, 1].abs() < 100)


def test_list_longer_than_depth_is_rejected() -> None:
    with pytest.raises(ValueError):
        tome_forward(_vit_cls(), _pixels(), [1, 1, 1, 1])


def test_parse_r_forms() -> None:
    assert parse_r(4, 3) == [3, 3, 3, 3]
    assert parse_r(1, 5) == [5]
    assert parse_r(4, [1, 2]) == [1, 2, 0, 0]
    assert parse_r(3, (4, 0.0)) == [4, 4, 4]
    assert parse_r(3, (4, -1.0)) == [8, 4, 0]  # the paper's "decreasing" schedule
    assert parse_r(3, (4, 1.0)) == [0, 4, 8]


# ---------------------------------------------------------------- (3) hand-checked matching


def _rows(*vectors: list[float]) -> torch.Tensor:
    """[1, N, D] from N row vectors."""
    return torch.tensor([vectors], dtype=torch.float32)


def test_matching_hand_case_cls_plus_four() -> None:
    """CLS + 4 tokens. A = positions {0, 2, 4}, B = positions {1, 3}.

    p2 = (0.1, 1) vs p1 = (0, 1): cos = 0.995 (vs p3 = (1, 0): 0.0995);
    p4 = (1, 0.5) vs p3: cos = 0.894 (vs p1: 0.447).
    Edge ranking: p2→p1 (0.995) before p4→p3 (0.894); CLS row is -inf.
    r = 1: p2 merges into p1; output [p0, p4, (p1+p2)/2, p3], sizes [1, 1, 2, 1].
    r = 2: also p4 into p3; output [p0, (p1+p2)/2, (p3+p4)/2], sizes [1, 2, 2].
    r = 3 is clipped to (5 - 1) // 2 = 2.
    """
    metric = _rows([1.0, 1.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [1.0, 0.5])
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1) * 10.0  # p_i = 10 i

    m1 = bipartite_soft_matching(metric, 1, class_token=True)
    assert m1.r == 1
    assert m1.src_idx is not None and m1.dst_idx is not None
    assert m1.src_idx.flatten().tolist() == [1]  # A[1] = position 2
    assert m1.dst_idx.flatten().tolist() == [0]  # B[0] = position 1
    y, size = merge_wavg(m1, x, None)
    assert y.flatten().tolist() == [0.0, 40.0, 15.0, 30.0]
    assert size.flatten().tolist() == [1.0, 1.0, 2.0, 1.0]

    for r in (2, 3):
        m = bipartite_soft_matching(metric, r, class_token=True)
        assert m.r == 2
        y, size = merge_wavg(m, x, None)
        assert y.flatten().tolist() == [0.0, 15.0, 35.0]
        assert size.flatten().tolist() == [1.0, 2.0, 2.0]


def test_matching_hand_case_two_into_one_and_sizes() -> None:
    """Both A tokens prefer B[0] = p1: r = 2 gives [p0, wavg(p1, p2, p4), p3].

    With incoming sizes [1, 3, 1, 1, 2] the merged token is (3·10 + 1·20 + 2·40) / 6.
    """
    metric = _rows([1.0, 1.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [0.2, 1.0])
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1) * 10.0
    size_in = torch.tensor([1.0, 3.0, 1.0, 1.0, 2.0]).view(1, 5, 1)
    m = bipartite_soft_matching(metric, 2, class_token=True)
    assert m.dst_idx is not None and m.dst_idx.flatten().tolist() == [0, 0]
    y, size = merge_wavg(m, x, size_in)
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0, 130.0 / 6.0, 30.0]))
    assert size.flatten().tolist() == [1.0, 6.0, 1.0]


def test_matching_hand_case_distill_token() -> None:
    """CLS + distill + 4. A = positions {0, 2, 4}, B = {1 (distill), 3, 5}.

    p2 equals the distillation token (cos 1) but column B[0] is -inf, so p2's partner is
    p5 (cos 0.6). p4 → p3 has cos 0.994, the best edge.
    r = 1: [p0, p1, p2, (p3+p4)/2, p5]  (order: A kept[0], B[0], A kept[1:], B[1:]).
    r = 2: [p0, p1, (p3+p4)/2, (p2+p5)/2]; r = 5 is clipped to (6 - 2) // 2 = 2.
    """
    metric = _rows(
        [0.3, 0.3, 0.3],
        [1.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.9, 0.1],
        [0.6, 0.0, 0.8],
    )
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1) * 10.0

    m1 = bipartite_soft_matching(metric, 1, class_token=True, distill_token=True)
    y, size = merge_wavg(m1, x, None)
    assert y.flatten().tolist() == [0.0, 10.0, 20.0, 35.0, 50.0]
    assert size.flatten().tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]

    for r in (2, 5):
        m = bipartite_soft_matching(metric, r, class_token=True, distill_token=True)
        assert m.r == 2
        y, size = merge_wavg(m, x, None)
        assert y.flatten().tolist() == [0.0, 10.0, 35.0, 35.0]
        assert size.flatten().tolist() == [1.0, 1.0, 2.0, 2.0]


def test_matching_ties_are_stable() -> None:
    """p2 and p4 are identical and both best-match p1: with r = 1 the lower index (p2)
    merges; an A token equidistant from two B tokens picks the lower B index."""
    metric = _rows([1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1) * 10.0
    m = bipartite_soft_matching(metric, 1, class_token=True)
    y, _ = merge_wavg(m, x, None)
    assert y.flatten().tolist() == [0.0, 40.0, 15.0, 30.0]

    metric = _rows([1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0])
    m = bipartite_soft_matching(metric, 1, class_token=True)
    assert m.src_idx is not None and m.dst_idx is not None
    assert m.src_idx.flatten().tolist() == [1]
    assert m.dst_idx.flatten().tolist() == [0]

    # Many exact ties: CLS + 64 identical tokens. Edges rank in A order, partners are B[0].
    metric = torch.cat([torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 64, 2)], dim=1)
    m = bipartite_soft_matching(metric, 10, class_token=True)
    assert m.src_idx is not None and m.dst_idx is not None and m.unm_idx is not None
    assert m.src_idx.flatten().tolist() == list(range(1, 11))
    assert m.dst_idx.flatten().tolist() == [0] * 10
    assert m.unm_idx.flatten().tolist() == [0, *range(11, 33)]


def test_no_merge_when_clipped_to_zero() -> None:
    metric = _rows([1.0, 0.0], [0.0, 1.0])
    m = bipartite_soft_matching(metric, 4, class_token=True)
    assert m.r == 0
    x = torch.ones(1, 2, 3)
    y, size = merge_wavg(m, x, None)
    assert torch.equal(y, x) and size.shape == (1, 2, 1)


# ---------------------------------------------------------------- whole-model properties


def test_proportional_attention_makes_duplicate_merging_exact() -> None:
    """Merging exact duplicates with size-weighted average + proportional attention
    changes nothing: softmax with a log(s) bias on one key equals s copies of that key.

    A constant image and equal patch position embeddings make all 16 patch tokens
    identical in every block, so every merge is between duplicates.
    """
    model = _vit_cls()
    with torch.no_grad():
        pos = model.vit.embeddings.position_embeddings
        pos[:, 1:] = pos[:, 1:2].clone()
    pixels = torch.full((1, 3, 32, 32), 0.3)
    base = tome_forward(model, pixels, 0)["logits"]
    for r in (1, 4, 8):
        merged = tome_forward(model, pixels, r, prop_attn=True)["logits"]
        assert (merged - base).abs().max().item() <= 1e-5
    no_prop = tome_forward(model, pixels, 8, prop_attn=False)["logits"]
    assert (no_prop - base).abs().max().item() > 1e-3


def test_batch_rows_are_independent() -> None:
    """Matching is per image: a batch equals its images run one by one."""
    for kind in ("vit_cls", "deit_teacher"):
        model = BUILDERS[kind]()
        pixels = _pixels(3, seed=11)
        batched = tome_forward(model, pixels, 4)["logits"]
        single = torch.cat([tome_forward(model, pixels[i : i + 1], 4)["logits"] for i in range(3)])
        assert (batched - single).abs().max().item() <= 1e-5


def test_dinov2_layer_scale_is_applied() -> None:
    """DINOv2's layer scale (the published patch's ToMeBlock has no ls1/ls2): r = 0 matches
    the model only with both factors applied, and each factor moves the output."""
    model = _dinov2_model()
    pixels = _pixels()
    want = _hf_output(model, pixels)["pooler_output"]
    assert (tome_forward(model, pixels, 0)["pooler_output"] - want).abs().max() <= 1e-5
    for name in ("layer_scale1", "layer_scale2"):
        changed = _dinov2_model()
        with torch.no_grad():
            for layer in changed.encoder.layer:
                getattr(layer, name).lambda1.fill_(1.0)
        got = tome_forward(changed, pixels, 0)["pooler_output"]
        assert (got - want).abs().max() > 1e-3


def test_dinov2_classifier_rejected() -> None:
    from transformers import Dinov2ForImageClassification

    from tests.reference.models import _dinov2_config

    model = Dinov2ForImageClassification(_dinov2_config(num_labels=10)).eval()
    with pytest.raises(TypeError, match="size-aware mean"):
        tome_forward(model, _pixels(), 1)


def test_training_mode_rejected() -> None:
    model = _vit_cls().train()
    with pytest.raises(ValueError):
        tome_forward(model, _pixels(), 1)
