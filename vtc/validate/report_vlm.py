"""A vision-language report's gates and page: `judge` fills `VlmReport.gates` from the
recipe's (`VLM_GATES`, each judged by the encoder gates' rule), `render_markdown` writes
report.md (what `vtc report show` prints for a VLM bundle)."""

from __future__ import annotations

from vtc.report import Gate, lookup, to_jsonable
from vtc.report_vlm import VLM_GATES, VlmReport
from vtc.validate.gates import judge_value

__all__ = ["judge", "render_markdown"]


def judge(report: VlmReport, gates: dict[str, float]) -> None:
    """Fill the gates from the recipe's (VLM_GATES); cost gates are skipped when the
    engines were not timed (--no-bench)."""
    out: list[Gate] = []
    skipped: list[str] = []
    for name, limit in gates.items():
        path, kind = VLM_GATES[name]
        if path[0] == "cost" and report.cost is None:
            skipped.append(name)
            continue
        if path[:2] == ("parity", "deployment") and report.parity.deployment is None:
            skipped.append(name)  # an fp32 decoder has no deployment tier
            continue
        if path[:2] == ("parity", "generation") and lookup(report, path) is None:
            skipped.append(name)  # no fp32 decoder ran (parity.generation.note says why)
            continue
        out.append(judge_value(name, lookup(report, path), limit, kind, path))
    report.gates, report.gates_skipped = out, skipped
    report.passed = all(g.passed for g in out)


def render_markdown(report: VlmReport) -> str:
    """report.md: every part of the report as a small table."""
    lines = [f"# vtc vision-language bundle: {report.source.spec}", "",
             f"recipe `{report.recipe.get('name')}` · vtc {report.vtc_version} · "
             f"{'PASS' if report.passed else 'FAIL'} · {report.elapsed_s:.1f} s", ""]
    for title, part in (("Cuts", report.cuts), ("Parity (engines vs eager with the same cuts)",
                                                report.parity.generation),
                        ("Deployment (the fp16/int4 decoder vs its fp32 twin, or the "
                         "eager reference where none was built; same cuts)",
                         report.parity.deployment),
                        ("Fidelity (vs the uncut eager model)", report.fidelity),
                        ("Cost (uncut vs cut engines, interleaved)", report.cost),
                        ("Engine", report.engine), ("Machine", report.machine)):
        lines += [f"## {title}", ""]
        if part is None:
            lines += ["not measured (--no-bench)" if title.startswith("Cost") else
                      "none: the decoder is fp32", ""]
            continue
        lines += ["| field | value |", "|---|---|"]
        for k, v in to_jsonable(part).items():
            if isinstance(v, list) and len(v) > 12:
                v = f"{len(v)} values"
            lines.append(f"| {k} | {v} |")
        lines.append("")
    if report.fidelity.random_weights:
        lines += ["Fidelity figures come from random weights: they test the plumbing, not a "
                  "trained model's quality.", ""]
    lines += ["## Gates", ""]
    lines += [f"- {'PASS' if g.passed else 'FAIL'} {g.name}: {g.value} "
              f"({'≥' if g.kind == 'min' else '≤'} {g.limit}) {g.note}" for g in report.gates]
    lines += [f"- skipped {g}" for g in report.gates_skipped]
    return "\n".join(lines) + "\n"
