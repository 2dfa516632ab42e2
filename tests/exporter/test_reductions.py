"""The eager ops of the methods (tome_merge, pitome_merge, evit_prune): properties and
hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from vtc.exporter.eager import attention
from vtc.exporter.registry import BlockParts
from vtc.methods.evit import evit_prune, evit_scores
from vtc.methods.pitome import energy_order, pitome_merge
from vtc.methods.tome import tome_merge


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- ToMe --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "p", "r"), [(17, 1, 2), (17, 1, 8), (18, 2, 3), (16, 0, 8), (9, 0, 1)]
)
def test_tome_counts_protected_and_sizes(n: int, p: int, r: int) -> None:
    x, metric = _rand(3, n, 6, seed=1), _rand(3, n, 5, seed=2)
    sizes = torch.randint(1, 4, (3, n, 1), generator=torch.Generator().manual_seed(3)).float()
    out, out_s = tome_merge(x, sizes, metric, r, p)
    assert out.shape == (3, n - r, 6)
    assert out_s.shape == (3, n - r, 1)
    torch.testing.assert_close(out[:, :p], x[:, :p], rtol=0, atol=0)
    torch.testing.assert_close(out_s[:, :p], sizes[:, :p], rtol=0, atol=0)
    torch.testing.assert_close(out_s.sum(dim=1), sizes.sum(dim=1))
    # the size-weighted token sum (the "mass") is preserved by merging
    torch.testing.assert_close((out * out_s).sum(dim=1), (x * sizes).sum(dim=1))


def test_tome_r0_is_identity() -> None:
    x, metric = _rand(2, 9, 4), _rand(2, 9, 4, seed=5)
    sizes = torch.ones(2, 9, 1)
    out, out_s = tome_merge(x, sizes, metric, 0, 1)
    assert torch.equal(out, x)
    assert torch.equal(out_s, sizes)


def test_tome_rejects_too_large_r() -> None:
    with pytest.raises(ValueError, match="outside"):
        tome_merge(torch.zeros(1, 6, 2), torch.ones(1, 6, 1), torch.ones(1, 6, 2), 3, 1)


def _tome_example() -> tuple[torch.Tensor, torch.Tensor]:
    # N = 5, P = 1, C = 2. Unprotected u0..u3 -> a = (u0, u2), b = (u1, u3).
    x = torch.tensor([[[9.0, 9.0], [2.0, 4.0], [4.0, 0.0], [1.0, 1.0], [3.0, 3.0]]])
    metric = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.5, 1.0]]])
    # cosine: a0.b0 = 0.995, a0.b1 = 0.447, a1.b0 = 0.0995, a1.b1 = 0.894
    # -> node_max = (0.995, 0.894), node_idx = (0, 1); r = 1 merges a0 (u0) into b0 (u1).
    return x, metric


def test_tome_hand_example_unit_sizes() -> None:
    x, metric = _tome_example()
    out, sizes = tome_merge(x, torch.ones(1, 5, 1), metric, 1, 1)
    want = torch.tensor([[[9.0, 9.0], [1.0, 1.0], [3.0, 2.0], [3.0, 3.0]]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(sizes, torch.tensor([[[1.0], [1.0], [2.0], [1.0]]]))


def test_tome_hand_example_weighted_sizes() -> None:
    x, metric = _tome_example()
    sizes = torch.tensor([[[1.0], [3.0], [1.0], [2.0], [1.0]]])
    out, out_s = tome_merge(x, sizes, metric, 1, 1)
    # b0' = (3 * (2, 4) + 1 * (4, 0)) / 4 = (2.5, 3.0)
    want = torch.tensor([[[9.0, 9.0], [1.0, 1.0], [2.5, 3.0], [3.0, 3.0]]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(out_s, torch.tensor([[[1.0], [2.0], [4.0], [1.0]]]))


def test_tome_two_sources_into_one_destination() -> None:
    # P = 0: a = (u0, u2), b = (u1, u3); both a tokens match b0 best -> r = 2 merges both.
    x = torch.tensor([[[1.0], [2.0], [3.0], [10.0]]])
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    out, sizes = tome_merge(x, torch.ones(1, 4, 1), metric, 2, 0)
    torch.testing.assert_close(out, torch.tensor([[[2.0], [10.0]]]))
    torch.testing.assert_close(sizes, torch.tensor([[[3.0], [1.0]]]))


def test_tome_ties_prefer_lower_index() -> None:
    # identical a tokens -> equal node_max; r = 1 must merge a0 and keep a1.
    x = torch.tensor([[[1.0], [5.0], [7.0], [11.0], [13.0]]])
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    # a = (u0, u2) both (1, 0); b = (u1, u3) = ((0, 1), (0, 1)) -> all scores 0, argmax -> b0
    out, _ = tome_merge(x[:, 1:], torch.ones(1, 4, 1), metric[:, 1:], 1, 0)
    torch.testing.assert_close(out, torch.tensor([[[11.0], [6.0], [13.0]]]))


# ---- EViT --------------------------------------------------------------------------


def _evit_example() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(10, dtype=torch.float32).view(1, 5, 2)  # t_i = (2i, 2i + 1)
    attn = torch.full((1, 1, 5, 5), 0.2)
    attn[0, 0, 0] = torch.tensor([0.1, 0.4, 0.1, 0.3, 0.1])  # CLS row
    return x, attn


@pytest.mark.parametrize(
    ("fuse", "fused"),
    [("sum", [[0.1 * 4 + 0.1 * 8, 0.1 * 5 + 0.1 * 9]]), ("mean", [[6.0, 7.0]]), ("none", None)],
)
def test_evit_hand_example(fuse: str, fused: list[list[float]] | None) -> None:
    x, attn = _evit_example()
    out, _ = evit_prune(x, None, attn, keep=2, protected=1, fuse=fuse)  # type: ignore[arg-type]
    # scores of t1..t4 = (0.4, 0.1, 0.3, 0.1): keep t1, t3 in order, drop t2, t4
    want = [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]] + (fused or [])
    torch.testing.assert_close(out, torch.tensor([want]))


@pytest.mark.parametrize(("n", "p", "k"), [(17, 1, 8), (18, 2, 5), (16, 0, 7), (6, 1, 5)])
@pytest.mark.parametrize("fuse", ["sum", "mean", "none"])
def test_evit_counts_and_protected(n: int, p: int, k: int, fuse: str) -> None:
    x = _rand(2, n, 4)
    attn = _rand(2, 3, n, n, seed=4).softmax(dim=-1)
    out, _ = evit_prune(x, None, attn, k, p, fuse,  # type: ignore[arg-type]
                        "cls" if p else "mean")
    assert out.shape == (2, p + k + (0 if fuse == "none" else 1), 4)
    assert torch.equal(out[:, :p], x[:, :p])
    # kept tokens are original tokens, in increasing original position
    for b in range(2):
        pos = [int((x[b, p:] == tok).all(dim=-1).nonzero()) for tok in out[b, p : p + k]]
        assert pos == sorted(pos)


def test_evit_ties_prefer_lower_index() -> None:
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    attn = torch.full((1, 2, 5, 5), 0.2)
    out, _ = evit_prune(x, None, attn, keep=2, protected=1, fuse="none")
    torch.testing.assert_close(out, torch.tensor([[[0.0], [1.0], [2.0]]]))


def test_evit_scores_cls_and_mean() -> None:
    attn = _rand(2, 3, 4, 4).softmax(dim=-1)
    torch.testing.assert_close(evit_scores(attn, 0, "mean"), attn.mean(dim=1).mean(dim=1))
    torch.testing.assert_close(evit_scores(attn, 1), attn[:, :, 0, 1:].mean(dim=1))
    torch.testing.assert_close(evit_scores(attn, 1, "mean"),
                               attn[:, :, :, 1:].mean(dim=1).mean(dim=1))
    with pytest.raises(ValueError, match="needs a protected"):
        evit_scores(attn, 0, "cls")  # no silent fallback


def test_evit_mean_score_keeps_the_most_attended_tokens() -> None:
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    attn = torch.zeros(1, 1, 5, 5)
    attn[0, 0, :, 3] = 0.6  # every query attends to token 3 most, then token 1
    attn[0, 0, :, 1] = 0.4
    attn[0, 0, 0] = torch.tensor([0.0, 0.0, 0.9, 0.0, 0.1])  # but CLS prefers token 2
    out, _ = evit_prune(x, None, attn, keep=2, protected=1, fuse="none", score="mean")
    assert out[0, :, 0].tolist() == [0.0, 1.0, 3.0]
    cls, _ = evit_prune(x, None, attn, keep=2, protected=1, fuse="none", score="cls")
    assert cls[0, :, 0].tolist() == [0.0, 2.0, 4.0]


def test_evit_rejects_bad_arguments() -> None:
    x, attn = _evit_example()
    with pytest.raises(ValueError, match="keep"):
        evit_prune(x, None, attn, keep=5, protected=1)
    with pytest.raises(ValueError, match="fuse"):
        evit_prune(x, None, attn, keep=1, protected=1, fuse="max")  # type: ignore[arg-type]


# ---- attention ---------------------------------------------------------------------


def test_attention_matches_sdpa_and_log_sizes() -> None:
    torch.manual_seed(0)
    lin = [torch.nn.Linear(8, 8) for _ in range(4)]
    parts = BlockParts(
        norm1=torch.nn.Identity(),
        q=lin[0],
        k=lin[1],
        v=lin[2],
        o=lin[3],
        norm2=torch.nn.Identity(),
        mlp=torch.nn.Identity(),
        ls1=None,
        ls2=None,
        num_heads=2,
        scale=0.5,
    )
    h = _rand(1, 5, 8)
    sizes = torch.tensor([[[1.0], [2.0], [1.0], [4.0], [1.0]]])
    with torch.no_grad():
        out, keys, probs = attention(parts, h, sizes.log())
        q = lin[0](h).view(1, 5, 2, 4).transpose(1, 2)
        k = lin[1](h).view(1, 5, 2, 4).transpose(1, 2)
        v = lin[2](h).view(1, 5, 2, 4).transpose(1, 2)
        bias = sizes.log()[:, None, None, :, 0].expand(1, 2, 5, 5)
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
        want = lin[3](want.transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(keys, k)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(1, 2, 5))


def test_tome_reference_split_pairs_the_other_parity() -> None:
    """first=1 (one CLS, the ToMe code's split): A = patches 1, 3, …, B = patches 0, 2, …."""
    x = torch.tensor([[[100.0], [0.0], [1.0], [2.0], [3.0]]])
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [0.1, 1.0]]])
    # candidates c0..c3 = x1..x4 = 0, 1, 2, 3; A = (c1, c3), B = (c0, c2). Best B of
    # c1 is c0 (cos 0.0995), of c3 also c0 (cos 0.198): the strongest edge is c3 → c0.
    out, sizes = tome_merge(x, torch.ones(1, 5, 1), metric, 1, 1, first=1)
    # [CLS, unmerged A (c1), B' = ((c0 + c3) / 2, c2)]
    assert out[0, :, 0].tolist() == [100.0, 1.0, 1.5, 2.0]
    assert sizes[0, :, 0].tolist() == [1.0, 1.0, 2.0, 1.0]


def test_pitome_hand_example() -> None:
    """CLS + 4 tokens, two tight pairs and the margin high: energy ranks the pairs first."""
    x = torch.tensor([[[100.0], [1.0], [2.0], [3.0], [4.0]]])
    metric = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.05], [-1.0, 0.2], [0.0, -1.0]]])
    _sim, order = energy_order(metric[:, 1:], margin=0.5, alpha=1.0)
    assert order[0].tolist()[:2] == [0, 1]  # the similar pair has the highest energy
    out, sizes = pitome_merge(x, torch.ones(1, 5, 1), metric, 1, 1, margin=0.5)
    # A = rank 0 (x1) merges into B = rank 1 (x2); kept x3, x4 in energy order
    kept = order[0].tolist()[2:]
    assert out[0, 0, 0] == 100.0 and out[0, -1, 0] == 1.5
    assert out[0, 1:3, 0].tolist() == [[1.0, 2.0, 3.0, 4.0][i] for i in kept]
    assert sizes[0, :, 0].tolist() == [1.0, 1.0, 1.0, 2.0]


def test_evit_carries_sizes_after_a_merge() -> None:
    x = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1)
    sizes = torch.tensor([[[1.0], [2.0], [1.0], [3.0], [1.0]]])
    attn = torch.zeros(1, 1, 5, 5)
    attn[0, 0, 0] = torch.tensor([0.0, 0.1, 0.4, 0.2, 0.3])
    out, s = evit_prune(x, sizes, attn, keep=2, protected=1, fuse="sum")
    assert out[0, :3, 0].tolist() == [0.0, 2.0, 4.0]  # CLS, then x2 and x4 in order
    assert s is not None and s[0, :, 0].tolist() == [1.0, 1.0, 1.0, 5.0]  # fused: 2 + 3
