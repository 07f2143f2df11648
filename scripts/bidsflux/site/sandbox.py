"""The Jinja environment every "{{ ... }}" of the site files runs in: sandboxed, and bounded in
what one expression may build or spend, so a template can fail but not exhaust the machine."""

from __future__ import annotations

import contextlib
import functools
import math
import re
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

# Far above anything a stack file needs (values are host names, ports, short commands).
MAX_SIZE = 100_000  # characters of a string or items of a list one operation may build
MAX_INT_BITS = 4096  # size of a number `**` may produce
MAX_SECONDS = 2.0  # CPU time of one template


class TemplateTimeout(Exception):
    """A template ran longer than MAX_SECONDS."""


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_repeat(left: Any, right: Any) -> None:
    for seq, times in ((left, right), (right, left)):
        size = _size(seq)
        if size is not None and isinstance(times, int) and size * max(times, 0) > MAX_SIZE:
            raise SecurityError(f"repeating a value of length {size} {times} times exceeds {MAX_SIZE}")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(left, (int, float)) and isinstance(right, (int, float)) and abs(left) > 1:
        bits = abs(right) * math.log2(abs(left))
        if bits > MAX_INT_BITS:
            raise SecurityError(f"{left} ** {right} is too large a number")


def _check_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # Widths and counts (center, ljust, indent, wordwrap, truncate, zfill...) size their output.
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise SecurityError(f"the number {value} is beyond {MAX_SIZE}, the largest a template may pass")


_WIDTHS = re.compile(r"\{[^{}]*:[^{}]*?(\d+)[^{}]*\}|%[-#0 +]*(\d+)|%[-#0 +]*\d*\.(\d+)")


def _check_format_string(text: Any) -> None:
    """'%099999999d' and '{:99999999}' allocate their width before any size check could see it."""
    if isinstance(text, str):
        for m in _WIDTHS.finditer(text):
            width = int(next(g for g in m.groups() if g is not None))
            if width > MAX_SIZE:
                raise SecurityError(f"a format width of {width} exceeds {MAX_SIZE}")


def _bounded(func: Callable[..., Any], name: str = "") -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args, kwargs)
        if name == "format" and args:
            _check_format_string(args[0])
        result = func(*args, **kwargs)
        size = _size(result)
        if size is not None and size > MAX_SIZE:
            raise SecurityError(f"a filter produced {size} characters or items, beyond {MAX_SIZE}")
        return result

    return wrapper


class BoundedSandbox(SandboxedEnvironment):
    """SandboxedEnvironment (no private attributes, no str.format into internals) that also
    refuses huge repetitions, powers, widths and ranges, and has no lipsum()."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        options.setdefault("undefined", jinja2.StrictUndefined)
        options.setdefault("autoescape", False)
        super().__init__(**options)
        self.filters = {name: _bounded(f, name) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded(self.globals["range"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%":
            _check_format_string(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        _check_arguments(args, kwargs)
        if getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_format_string(getattr(__obj, "__self__", None))
            for value in args:
                _check_format_string(value)
        result = super().call(__context, __obj, *args, **kwargs)
        size = _size(result)
        if size is not None and size > MAX_SIZE:
            raise SecurityError(f"a call produced {size} characters or items, beyond {MAX_SIZE}")
        return result


@contextlib.contextmanager
def time_limit(seconds: float = MAX_SECONDS) -> Iterator[None]:
    """Raise TemplateTimeout in the block after `seconds` of CPU time (CPU, not wall time, so a
    busy machine does not fail a good template). Main thread only: elsewhere the size limits
    above are the only bound."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TemplateTimeout(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGVTALRM, expired)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def describe(exc: BaseException) -> str:
    """A template's failure as one line for a diagnostic."""
    if isinstance(exc, jinja2.TemplateError):
        return f"template: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:300]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"template: {type(exc).__name__}{': ' + text if text else ''}"[:300]


# What evaluating a template may raise beyond TemplateError: the expression is the user's data, so
# division by zero, a bad index or a failed filter assertion is their mistake to be shown.
TEMPLATE_FAILURES: tuple[type[BaseException], ...] = (
    jinja2.TemplateError, TemplateTimeout, ArithmeticError, LookupError, TypeError, ValueError,
    AssertionError, AttributeError, RecursionError, MemoryError, UnicodeError,
)
