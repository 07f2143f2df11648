"""Problems found in a user's files, reported as `file:line:col: key.path: message`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when the problem has no position (a missing file)
    col: int  # 1-based
    key: str  # dotted key path, "" for the document itself
    message: str
    severity: str = field(default="error", compare=False)

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.file}:{self.line}:{self.col}:{key} {self.message}"


class UserError(Exception):
    """A problem the user can fix; the CLI prints it without a traceback and exits 1."""

    def __init__(self, message: str, diagnostics: Iterable[Diagnostic] = ()) -> None:
        super().__init__(message)
        self.diagnostics = list(diagnostics)

    def __str__(self) -> str:
        lines = [self.args[0]] if self.args and self.args[0] else []
        lines += [str(d) for d in self.diagnostics]
        return "\n".join(lines)


def key_path(path: Iterable[object]) -> str:
    """Dotted path as users write it: services.gitlab.ports[0].published."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def clip(text: str, limit: int = 300) -> str:
    """`text` shortened to at most `limit` characters at a word boundary, marked with an ellipsis:
    an engine's long message is shortened, never cut mid-word."""
    text = " ".join(text.split()) if len(text) > limit else text
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def to_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([asdict(d) for d in diagnostics], indent=2)


def seconds_from_env(name: str, default: float, value: float | None = None) -> float:
    """A timeout given on the command line (`value`), else from environment variable `name`, else
    `default`; a value that is not a number is the user's mistake, said as such."""
    if value is not None:
        return value
    import os

    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number of seconds") from None
