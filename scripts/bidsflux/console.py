"""What every command shares: exit codes, consoles that never read user text as markup, the error
handler, the common options (also accepted before the subcommand), -q/-v, the connection timeout,
and the question asked before changing production."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from bidsflux.diagnostics import UserError

F = TypeVar("F", bound=Callable[..., Any])

# Terraform's detailed convention for plans (0 no change, 2 changes pending, 1 error); a mistake on
# the command line must not look like any of them, so it gets sysexits.h's EX_USAGE.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130

DEFAULT_CONNECT_TIMEOUT = 30.0
CONNECT_TIMEOUT_ENV = "BIDSFLUX_CONNECT_TIMEOUT"
_META = "bidsflux."


def make_console(stderr: bool = False, soft_wrap: bool = True) -> Console:
    """A console that prints text as given: `[red]` stays `[red]` (site values, paths and engine
    messages are never rich markup), quiet under -q (errors still print), width from COLUMNS."""
    stream = sys.stderr if stderr else sys.stdout
    # COLUMNS (or the terminal) decides the width; a log file without either gets 160 columns.
    width = None if "COLUMNS" in os.environ or stream.isatty() else 160
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=soft_wrap, width=width,
                   quiet=verbosity() < 0 and not stderr)


err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def _meta() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.meta if ctx is not None else {}


def verbosity() -> int:
    """-1 with -q, 0 by default, 1 or more with -v."""
    return int(_meta().get(_META + "verbosity", 0))


def connect_timeout() -> float:
    """Seconds to wait for the Docker engine or GitLab to answer one request (--connect-timeout,
    else BIDSFLUX_CONNECT_TIMEOUT, else 30)."""
    value = _meta().get(_META + "connect_timeout")
    if value is None:
        try:
            value = float(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT))
        except ValueError:
            value = DEFAULT_CONNECT_TIMEOUT
    return float(value)


def _error_line(message: str) -> Text:
    return Text.assemble(("error:", "bold red"), " ", message)


def _json_error(message: str, exc: BaseException | None) -> None:
    diagnostics = [asdict(d) for d in getattr(exc, "diagnostics", [])]
    click.echo(json.dumps({"error": message, "diagnostics": diagnostics}, indent=2))


def friendly_errors(func: F) -> F:
    """A user's mistake or an unreachable engine ends in a message and exit 1, never a traceback.
    With --format json the message is also a JSON object on stdout, for the script reading it."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("fmt") == "json"
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err_console.print(_error_line(str(exc)))
            if as_json:
                _json_error(str(exc.args[0]) if exc.args and exc.args[0] else str(exc), exc)
            sys.exit(EXIT_ERROR)
        except OSError as exc:
            # Files and folders the user named (permissions, full disk, missing parent folder).
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            message = f"{where.strip()}: {exc.strerror or exc}" if where else str(exc.strerror or exc)
            err_console.print(_error_line(message))
            if as_json:
                _json_error(message, None)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _from_group(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A command's --site/--root falls back to the one given before the subcommand."""
    key = _META + str(param.name)
    if value is None:
        return ctx.meta.get(key)
    return value


def _to_meta(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.meta[_META + str(param.name)] = value
    return value


site_option = click.option(
    "--site", "site", type=click.Path(dir_okay=False), default=None, callback=_from_group,
    help="Site file (default: stack/site.yml of the repository).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text for people, json for tools and merge-request notes (errors too).",
)
root_option = click.option(
    "--root", "root", type=click.Path(file_okay=False), default=None, callback=_from_group,
    help="Repository root (default: found from the current folder).",
)
yes_option = click.option(
    "--yes", "-y", "yes", is_flag=True,
    help="Do not ask before changing anything (also implied in CI: CI or GITLAB_CI set).",
)


def connect_timeout_option(func: F) -> F:
    """--connect-timeout on a command that talks to Docker or GitLab (the group's value otherwise)."""
    return click.option(
        "--connect-timeout", "connect_timeout", type=click.FloatRange(min=0.1), default=None,
        expose_value=False, callback=_to_meta, metavar="SECONDS",
        help=f"Seconds to wait for the Docker engine or GitLab to answer (default: {CONNECT_TIMEOUT_ENV}, else 30).",
    )(func)


def group_options(func: F) -> F:
    """Options of `bidsflux` itself, before the subcommand."""
    func = click.option("--site", "site", type=click.Path(dir_okay=False), default=None, expose_value=False,
                        callback=_to_meta, help="Site file, for every subcommand.")(func)
    func = click.option("--root", "root", type=click.Path(file_okay=False), default=None, expose_value=False,
                        callback=_to_meta, help="Repository root, for every subcommand.")(func)
    func = connect_timeout_option(func)
    func = click.option("-q", "--quiet", "quiet", count=True, expose_value=False, callback=_verbosity(-1),
                        help="Print only errors and requested output (plans, JSON).")(func)
    func = click.option("-v", "--verbose", "verbose", count=True, expose_value=False, callback=_verbosity(1),
                        help="Say more: -v names each engine and URL used and what is run, -vv also every HTTP request.")(func)
    return func


def _verbosity(sign: int) -> Callable[[click.Context, click.Parameter, int], int]:
    def callback(ctx: click.Context, param: click.Parameter, value: int) -> int:
        if value:
            ctx.meta[_META + "verbosity"] = int(ctx.meta.get(_META + "verbosity", 0)) + sign * value
        return value

    return callback


def in_ci(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(k, "").lower() in ("true", "1", "yes") for k in ("CI", "GITLAB_CI"))


def confirm_plan(lines: Iterable[str] | Callable[[], Iterable[str]], what: str, yes: bool) -> None:
    """On a terminal, show what is about to change and ask; --yes or CI skips the question.

    Without a terminal (a script, a cron job) nothing is asked, as before: scripts pass --yes to
    be explicit, and CI is recognised on its own."""
    if yes or in_ci() or not (sys.stdin.isatty() and sys.stdout.isatty()):
        return
    out = make_console()
    for line in (lines() if callable(lines) else lines):
        out.print(line)
    if not click.confirm(f"{what}. Continue?", default=False):
        raise UserError("stopped at your request; nothing was changed")
