"""`vtc check` for vision-language bundles: two VLM reports, metric by metric.

    baseline report.json (kind: vlm) ─┐
                                      ├─ incomparable? → InputError (exit 2), reasons named
    this report.json (kind: vlm) ─────┘
        │
        ├─ cuts      visual tokens, LM tokens per layer, prefill FLOPs ratio   exact
        ├─ parity    greedy tokens equal to the eager model with the cuts     no drop
        │            first-step logits / vision max |diff|                    ≤ the recipe's gate
        ├─ deploy    an fp16/int4 decoder vs its fp32 twin: tokens equal,    drop ≤ tolerance
        │            first-logits cosine (min)
        ├─ fidelity  first-logits cosine; first-token agreement, exact match  drop ≤ tolerance
        ├─ speed     prefill speedup (uncut / cut, timed interleaved)         bootstrap interval
        │            decode speedup (per-round tokens/s, same pairing)        bootstrap interval
        └─ gates     this bundle's own recipe gates                           as judged

The prefill speedup is the encoder check's `throughput.speedup` for the decoder: both
runs' per-round prefill latencies (`cost.prefill_samples_ms*`) are resampled, paired
within a run, and the row fails only when the whole interval of speedup_now /
speedup_baseline lies below 1 - `max_speedup_drop`. The decode speedup is judged the same
way on `cost.decode_samples_tok_s*` (as milliseconds per token); a report written before
vtc recorded those samples shows its median tokens/s, not judged.
"""

from __future__ import annotations

from typing import Any

from vtc import stats
from vtc.check.rows import Row, _exact, _fmt, _limit_row, drop_row
from vtc.check.speed import MIN_ROUNDS, advisory, paired_row
from vtc.recipe import CheckCfg
from vtc.report_vlm import VlmCost, VlmReport

__all__ = ["vlm_incomparable", "vlm_rows"]


def _precision(r: VlmReport) -> str:
    return str(((r.recipe.get("generate") or {}).get("precision")) or "fp32")


def vlm_incomparable(base: VlmReport, now: VlmReport) -> list[str]:
    """Why two VLM reports cannot be compared (empty: they can): another architecture,
    tower, LM depth, decoder precision or engine. New cuts, checkpoints or vtc versions
    are what a check is for."""
    facts = [
        ("model type", base.source.model_type, now.source.model_type),
        ("tower tokens", base.cuts.tower_tokens, now.cuts.tower_tokens),
        ("LM layers", len(base.cuts.lm_layer_tokens_uncut), len(now.cuts.lm_layer_tokens_uncut)),
        ("decoder precision", _precision(base), _precision(now)),
        ("engine", base.engine.kind, now.engine.kind),
    ]
    return [f"{what}: baseline {a}, now {b}" for what, a, b in facts if a != b]


def _cut_rows(b: VlmReport, n: VlmReport) -> list[Row]:
    def layers(x: list[int]) -> str:
        return "→".join(map(str, x)) if len(x) <= 4 else f"{x[0]}→…→{x[-1]} ({len(x)} layers)"

    return [_exact("cuts.visual_tokens", b.cuts.visual_tokens, n.cuts.visual_tokens),
            _exact("cuts.lm_layer_tokens", b.cuts.lm_layer_tokens, n.cuts.lm_layer_tokens,
                   layers),
            _exact("cuts.flops_ratio", b.cuts.flops_ratio, n.cuts.flops_ratio)]


def _parity_rows(b: VlmReport, n: VlmReport, tol: CheckCfg) -> list[Row]:
    gates = n.recipe.get("gates", {}) or {}
    pb, pn = b.parity.generation, n.parity.generation
    if pb.tokens_equal is None or pn.tokens_equal is None:  # no fp32 decoder ran (note)
        where = "the baseline" if pb.tokens_equal is None else "this bundle"
        rows = [Row("parity.generation.tokens_equal", _fmt(pb.tokens_equal),
                    _fmt(pn.tokens_equal), "", "skip", f"not measured in {where}")]
    else:
        rows = [drop_row("parity.generation.tokens_equal", pb.tokens_equal, pn.tokens_equal,
                         0.0, "", why="fewer prompts reproduce the eager model's tokens")]
    for field, gate in (("first_logits_max_abs_diff", "max_generation_logits_diff"),
                        ("vision_max_abs_diff", "max_vision_diff")):
        limit = gates.get(gate)
        why = f"the recipe's {gate} gate" if limit is not None else "check.max_parity_diff"
        rows.append(_limit_row(f"parity.generation.{field}", getattr(pb, field),
                               getattr(pn, field),
                               float(limit if limit is not None else tol.max_parity_diff), why))
    return rows


def _deployment_rows(b: VlmReport, n: VlmReport, tol: CheckCfg) -> list[Row]:
    db, dn = b.parity.deployment, n.parity.deployment
    if db is None or dn is None:  # fp32 decoders (the precisions are equal: compared above)
        return []
    return [drop_row("parity.deployment.tokens_equal", db.tokens_equal, dn.tokens_equal,
                     tol.max_agreement_drop, "max_agreement_drop"),
            drop_row("parity.deployment.first_logits_cosine_min", db.first_logits_cosine_min,
                     dn.first_logits_cosine_min, tol.max_cosine_drop, "max_cosine_drop")]


def _fidelity_rows(b: VlmReport, n: VlmReport, tol: CheckCfg) -> list[Row]:
    fb, fn = b.fidelity, n.fidelity
    return [drop_row("fidelity.first_logits_cosine_mean", fb.first_logits_cosine_mean,
                     fn.first_logits_cosine_mean, tol.max_cosine_drop, "max_cosine_drop"),
            drop_row("fidelity.top1_agreement", fb.top1_agreement, fn.top1_agreement,
                     tol.max_agreement_drop, "max_agreement_drop"),
            drop_row("fidelity.exact_match", fb.exact_match, fn.exact_match,
                     tol.max_agreement_drop, "max_agreement_drop")]


def _ms_per_token(tok_s: list[float]) -> list[float]:
    return [1e3 / x for x in tok_s]


def _decode_row(cb: VlmCost, cn: VlmCost, tol: CheckCfg) -> Row:
    before, after = f"{cb.decode_tok_s:.4g} tok/s", f"{cn.decode_tok_s:.4g} tok/s"
    rounds = min(len(c.decode_samples_tok_s) for c in (cb, cn))
    if rounds < MIN_ROUNDS:
        why = ("no per-round decode samples (a report from an older vtc)" if rounds == 0 else
               f"{rounds} timed rounds; a verdict needs >= {MIN_ROUNDS} (generate.rounds)")
        return Row("cost.decode_speedup", before, after,
                   f"{cn.decode_tok_s / cb.decode_tok_s:.3g}×" if cb.decode_tok_s else "",
                   "info", why + ": shown, not judged",
                   {"baseline": cb.decode_tok_s, "now": cn.decode_tok_s})
    pair = [(_ms_per_token(c.decode_samples_tok_s_uncut), _ms_per_token(c.decode_samples_tok_s))
            for c in (cb, cn)]
    return paired_row("cost.decode_speedup", pair[0], pair[1],
                      f"{stats.paired_speedup(*pair[0]):.3g}× ({before})",
                      f"{stats.paired_speedup(*pair[1]):.3g}× ({after})", tol)


def _speed_rows(b: VlmReport, n: VlmReport, tol: CheckCfg) -> list[Row]:
    metrics = ("cost.prefill_speedup", "cost.decode_speedup")
    if b.cost is None or n.cost is None:
        which = "the baseline" if b.cost is None else "this bundle"
        return [Row(m, "", "", "", "skip", f"not timed in {which} (built with --no-bench)")
                for m in metrics]
    cb, cn = b.cost, n.cost
    decode = _decode_row(cb, cn, tol)
    rounds = min(len(c.prefill_samples_ms) for c in (cb, cn))
    if rounds < MIN_ROUNDS:
        return [Row(metrics[0], "", "", "", "skip", f"{rounds} timed rounds; a noise-aware "
                    f"verdict needs >= {MIN_ROUNDS} (generate.rounds)"), *advisory([decode])]
    sb = stats.paired_speedup(cb.prefill_samples_ms_uncut, cb.prefill_samples_ms)
    sn = stats.paired_speedup(cn.prefill_samples_ms_uncut, cn.prefill_samples_ms)
    row = paired_row(metrics[0], (cb.prefill_samples_ms_uncut, cb.prefill_samples_ms),
                     (cn.prefill_samples_ms_uncut, cn.prefill_samples_ms),
                     f"{sb:.3g}× (ratio {cb.prefill_ratio:.3g})",
                     f"{sn:.3g}× (ratio {cn.prefill_ratio:.3g})", tol)
    return advisory([row, decode])  # (an info row passes through unchanged)


def vlm_rows(base: VlmReport, now: VlmReport, tol: CheckCfg) -> list[Row]:
    """Every row but the gates' for `now` against `base` (module docstring)."""
    return [*_cut_rows(base, now), *_parity_rows(base, now, tol),
            *_deployment_rows(base, now, tol), *_fidelity_rows(base, now, tol),
            *_speed_rows(base, now, tol)]


def from_dict(data: dict[str, Any]) -> VlmReport:
    """A VLM report read back from report.json (pydantic validates every field)."""
    from pydantic import TypeAdapter

    return TypeAdapter(VlmReport).validate_python(data)
