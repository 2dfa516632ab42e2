from __future__ import annotations

import pytest

from vtc.validate.bench import Timing, measure_interleaved, speedup


def test_structure_warmup_and_interleaving() -> None:
    calls: list[str] = []
    runners = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    msgs: list[str] = []
    res = measure_interleaved(runners, batch=4, warmup=2, repeats=5, progress=msgs.append)
    assert set(res) == {"a", "b", "c"}
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warmup first, per runner
    timed = calls[6:]
    assert len(timed) == 15
    # rounds rotate the starting runner
    assert [timed[i * 3] for i in range(5)] == ["a", "b", "c", "a", "b"]
    for t in res.values():
        assert isinstance(t, Timing)
        assert t.n == 5 and t.batch == 4
        assert 0 < t.p50_ms <= t.p95_ms
        assert t.img_per_s == pytest.approx(4 / (t.p50_ms / 1e3))
        assert set(t.to_dict()) == {"p50_ms", "p95_ms", "mean_ms", "img_per_s", "n", "batch",
                                    "samples_ms"}
        assert len(t.samples_ms) == 5 and t.p50_ms == pytest.approx(
            sorted(t.samples_ms)[2], rel=1e-6)  # the median is of the kept samples
    assert any("warmup a" in m for m in msgs) and any("round 5" in m for m in msgs)


def test_shuffled_rounds_call_each_runner_once_in_varying_order() -> None:
    calls: list[str] = []
    names = [f"r{i}" for i in range(6)]
    runners = {n: (lambda n=n: calls.append(n)) for n in names}
    res = measure_interleaved(runners, batch=1, warmup=0, repeats=8, shuffle_seed=3)
    rounds = [calls[i * 6:(i + 1) * 6] for i in range(8)]
    assert all(sorted(r) == names for r in rounds)  # each runner once per round
    # predecessors vary: a rotation would give each runner one predecessor only
    preds = {n: {r[r.index(n) - 1] for r in rounds if r.index(n) > 0} for n in names}
    assert max(len(p) for p in preds.values()) > 1
    assert all(t.n == 8 for t in res.values())
    calls.clear()
    measure_interleaved(runners, batch=1, warmup=0, repeats=8, shuffle_seed=3)
    assert [calls[i * 6:(i + 1) * 6] for i in range(8)] == rounds  # seeded: repeatable


def test_min_time_extends_repeats() -> None:
    res = measure_interleaved(
        {"x": lambda: sum(range(2000))}, batch=1, repeats=1, warmup=0, min_time_s=0.02
    )
    t = res["x"]
    assert t.n > 1
    assert t.mean_ms * t.n >= 20.0 - 1e-6  # total measured time reached min_time_s


def test_speedup_and_validation() -> None:
    base = Timing(p50_ms=10.0, p95_ms=12.0, mean_ms=10.5, img_per_s=800.0, n=5, batch=8)
    comp = Timing(p50_ms=4.0, p95_ms=5.0, mean_ms=4.2, img_per_s=2000.0, n=5, batch=8)
    assert speedup(base, comp) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        measure_interleaved({}, batch=1)
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({"a": lambda: None}, batch=1, repeats=0)
