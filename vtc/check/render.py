"""What people and CI systems read from a comparison: a text table, JSON, JUnit XML.

JUnit: one `<testcase>` per row (classname `vtc.check.<group>`, name the metric);
a FAIL row carries `<failure>`, a skipped one `<skipped>`, with the note as the
message. GitLab, Jenkins and GitHub test reporters render this layout.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from vtc.check.compare import Comparison
from vtc.check.rows import Row

__all__ = ["junit_xml", "summary", "table", "to_json"]

_COLS = ("metric", "baseline", "now", "change")


def table(cmp: Comparison, verdicts: bool = True) -> str:
    """Aligned columns; with `verdicts`, a verdict column and the notes of non-pass rows."""
    cols = [*_COLS, "verdict"] if verdicts else list(_COLS)
    body = [[getattr(r, c) for c in cols] for r in cmp.rows]
    widths = [max(len(c), *(len(row[i]) for row in body)) if body else len(c)
              for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for r, row in zip(cmp.rows, body, strict=True):
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        if verdicts and r.note and r.verdict != "pass":
            line += f"  ({r.note})"
        lines.append(line)
    return "\n".join(lines)


def summary(cmp: Comparison) -> str:
    """One line: the verdict and what failed or was skipped."""
    skipped = [r.metric for r in cmp.rows if r.verdict == "skip"]
    tail = f"; {len(skipped)} skipped" if skipped else ""
    if cmp.passed:
        return f"vtc check: PASS ({len(cmp.rows)} metrics{tail})"
    names = ", ".join(r.metric for r in cmp.failed)
    return f"vtc check: FAIL, {len(cmp.failed)} regression(s) of {len(cmp.rows)}: {names}{tail}"


def to_json(cmp: Comparison) -> str:
    return json.dumps(cmp.to_dict(), indent=2, sort_keys=True) + "\n"


def _case(suite: ET.Element, r: Row) -> None:
    group = r.metric.split(".", 1)[0]
    case = ET.SubElement(suite, "testcase", classname=f"vtc.check.{group}", name=r.metric,
                         time="0")
    detail = f"baseline {r.baseline}; now {r.now}; change {r.change}".strip()
    if r.verdict == "FAIL":
        ET.SubElement(case, "failure", message=r.note or "regression", type="regression"
                      ).text = detail
    elif r.verdict == "skip":
        ET.SubElement(case, "skipped", message=r.note)
    else:
        ET.SubElement(case, "system-out").text = detail


def junit_xml(cmp: Comparison) -> str:
    """The JUnit XML document of the comparison."""
    fails = len(cmp.failed)
    skips = sum(r.verdict == "skip" for r in cmp.rows)
    root = ET.Element("testsuites", name="vtc check", tests=str(len(cmp.rows)),
                      failures=str(fails), errors="0", skipped=str(skips))
    suite = ET.SubElement(root, "testsuite", name=f"vtc check {cmp.now} vs {cmp.baseline}",
                          tests=str(len(cmp.rows)), failures=str(fails), errors="0",
                          skipped=str(skips))
    for r in cmp.rows:
        _case(suite, r)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
