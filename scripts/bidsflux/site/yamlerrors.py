"""Where a YAML syntax error really is: the parser notices many mistakes lines later (an unclosed
quote, a key without its colon, an unclosed bracket), so the line to show is often not its mark."""

from __future__ import annotations

import re
from typing import Any

# A value that opens a quote: `key: "...`, `- '...`, or a quoted key.
_OPENING = re.compile(r"""^\s*(?:-\s+)?(?:[^"'#\s][^#]*?:\s+)?(?P<q>["'])(?P<rest>.*)$""")


def _closes(quote: str, rest: str) -> bool:
    i = 0
    while i < len(rest):
        c = rest[i]
        if quote == '"' and c == "\\":
            i += 2
            continue
        if c == quote:
            if quote == "'" and rest[i + 1:i + 2] == "'":  # '' is an escaped quote
                i += 2
                continue
            return True
        i += 1
    return False


def unclosed_quote_line(text: str, before: int) -> int | None:
    """0-based line of the first quoted value that is not closed on its own line, before line `before`."""
    for number, line in enumerate(text.splitlines()[:before]):
        m = _OPENING.match(line)
        if m and not _closes(m.group("q"), m.group("rest")):
            return number
    return None


def locate(text: str, exc: Any) -> tuple[int, int, str]:
    """1-based (line, column) and the message for a ruamel MarkedYAMLError."""
    problem_mark, context_mark = exc.problem_mark, exc.context_mark
    problem = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
    problem = problem.split("\n")[0]
    mark = problem_mark or context_mark
    if mark is None:
        return 1, 1, problem
    quote = unclosed_quote_line(text, mark.line)
    if quote is not None and quote < mark.line:
        return quote + 1, 1, (f"a quoted value opens on this line and is not closed on it; YAML read on to line "
                              f"{mark.line + 1} ({problem}): close the quote")
    context = str(exc.context or "")
    if context_mark is not None and context_mark.line < mark.line and (
            "simple key" in context or "flow" in context):
        what = "a key without ':'" if "simple key" in context else "a bracket opened here is not closed"
        return context_mark.line + 1, context_mark.column + 1, f"{what} ({problem}; noticed at line {mark.line + 1})"
    return mark.line + 1, mark.column + 1, problem
