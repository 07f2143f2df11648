"""What every command shares: the error handler that turns mistakes into messages, and the common options."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from bidsflux.diagnostics import UserError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def friendly_errors(func: F) -> F:
    """A user's mistake or an unreachable engine ends in a message and exit 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
            sys.exit(1)
        except OSError as exc:
            # Files and folders the user named (permissions, full disk, missing parent folder).
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            err_console.print(f"[bold red]error:[/]{where}: {exc.strerror or exc}", markup=True, highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


site_option = click.option(
    "--site", "site", type=click.Path(dir_okay=False), default=None,
    help="Site file (default: stack/site.yml of the repository).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="text for people, json for tools and merge-request notes.",
)
root_option = click.option(
    "--root", "root", type=click.Path(file_okay=False), default=None,
    help="Repository root (default: found from the current folder).",
)
