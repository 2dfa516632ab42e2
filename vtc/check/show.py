"""`vtc report show`: report.md for a terminal.

The page is the Markdown of `vtc.validate.report.render_markdown`, made to read in a
terminal: tables become aligned columns (no pipes, no separator row), headings stand
on their own (bold with `color`), emphasis and code spans lose their markers (bold
with `color`), fenced blocks are indented. Nothing else changes: the same lines in
the same order as report.md.
"""

from __future__ import annotations

import re

__all__ = ["terminal"]

_BOLD, _RESET = "\033[1m", "\033[0m"


def _inline(text: str, color: bool) -> str:
    strong = (lambda m: f"{_BOLD}{m.group(1)}{_RESET}") if color else (lambda m: m.group(1))
    text = re.sub(r"\*\*(.+?)\*\*", strong, text)
    return re.sub(r"`([^`]+)`", lambda m: m.group(1), text)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(rows: list[str], color: bool) -> list[str]:
    body = [_cells(r) for r in rows if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", r.strip())]
    plain = [[re.sub(r"\033\[[0-9;]*m", "", _inline(c, False)) for c in r] for r in body]
    width = max(len(r) for r in body)
    sizes = [max((len(r[i]) for r in plain if i < len(r)), default=0) for i in range(width)]
    out = []
    for k, (raw, flat) in enumerate(zip(body, plain, strict=True)):
        cells = [_inline(c, color) + " " * (sizes[i] - len(flat[i])) for i, c in enumerate(raw)]
        line = "  ".join(cells).rstrip()
        out.append(f"{_BOLD}{line}{_RESET}" if color and k == 0 else line)
    return out


def terminal(md: str, color: bool = False) -> str:
    """The terminal rendering of a report.md text (module docstring)."""
    lines, out, i = md.splitlines(), [], 0
    fenced = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fenced = not fenced
            i += 1
            continue
        if fenced:
            out.append("    " + line)
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out += _table(lines[i:j], color)
            i = j
            continue
        elif m := re.match(r"(#+)\s+(.*)", line):
            title = _inline(m.group(2), False)
            out.append(f"{_BOLD}{title}{_RESET}" if color else
                       title if len(m.group(1)) > 1 else title.upper())
        else:
            out.append(_inline(line, color))
        i += 1
    return "\n".join(out).rstrip() + "\n"
