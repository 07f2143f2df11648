"""`bidsflux health`: run the site's health checks and report them for people, machines and GitLab."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bidsflux.diagnostics import UserError
from bidsflux.health.checks import REGISTRY, Result, Status, load_context, overall, run_checks, select

STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


def write_junit(results: list[Result], path: Path, suite: str = "bidsflux health") -> None:
    """One test case per check; a failed check is a <failure>, a warning is reported in system-out
    (JUnit has no warning state, and a warning must not fail the pipeline)."""
    from junitparser import Failure, JUnitXml, TestCase, TestSuite

    name, suite = suite, TestSuite(suite)
    for r in results:
        case = TestCase(r.name, classname="bidsflux.health.checks", time=round(r.elapsed, 3))
        text = "\n".join([r.reason, *(["fix: " + r.fix] if r.fix else []), *r.details])
        if r.status == Status.FAIL:
            failure = Failure(message=r.reason, type_="fail")
            failure.text = text
            case.result = [failure]
        case.system_out = f"{r.status.value}: {text}"
        suite.add_testcase(case)
    xml = JUnitXml(name)
    xml.add_testsuite(suite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        xml.write(str(path), pretty=True)
    except OSError as exc:
        raise UserError(f"cannot write the JUnit file {path}: {exc.strerror or exc}") from None


def print_table(results: list[Result], console: Console) -> None:
    table = Table(title="bidsflux health", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason")
    table.add_column("fix")
    table.add_column("time", justify="right", no_wrap=True)
    for r in results:
        table.add_row(r.name, Text(r.status.value, style=STYLE[r.status]), Text(r.reason), Text(r.fix),
                      f"{r.elapsed:.1f}s")
    console.print(table)
    for r in results:
        if r.status != Status.OK and len(r.details) > 1:
            console.print(Text(f"{r.name}:", style="bold"))
            for line in r.details:
                console.print(Text(f"  {line}"))


def register(main: click.Group) -> None:
    from bidsflux.console import format_option, friendly_errors, make_console, root_option, site_option

    names = ", ".join(REGISTRY)

    @main.command()
    @click.option("--check", "checks", multiple=True, metavar="NAME", envvar="BIDSFLUX_HEALTH_CHECKS",
                  help=f"Run only this check (repeatable; or BIDSFLUX_HEALTH_CHECKS, space separated, e.g. "
                       f"as a schedule variable): {names}.")
    @format_option
    @click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None,
                  help="Also write a JUnit XML report (one test case per check) for GitLab.")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                  help="Seconds each check may take (default: each check's own limit).")
    @click.option("--endpoint", "endpoints", multiple=True, metavar="NAME=VALUE",
                  help="Reach NAME elsewhere than site.yml says (gitlab, registry, s3, dicom, mercure_web, "
                       "mercure_config); also BIDSFLUX_ENDPOINT_<NAME>.")
    @click.option("--secrets-file", type=click.Path(dir_okay=False), default=None,
                  help="Secrets file to read credentials from (default: secrets.file of site.yml).")
    @site_option
    @root_option
    @friendly_errors
    def health(checks: tuple[str, ...], fmt: str, junit: str | None, timeout: float | None,
               endpoints: tuple[str, ...], secrets_file: str | None, site: str | None, root: str | None) -> None:
        """Check the running site: swarm, GitLab, runners, S3, DICOM, disks, expiry.

        Each check gives ok, warn or fail with a reason and the fix. Credentials come from
        BIDSFLUX_SECRET_<NAME> variables (S3_ID/S3_SECRET in CI) or the secrets file; they are
        never printed. Exit 0 when nothing fails, 1 otherwise."""
        overrides: dict[str, str] = {}
        for item in endpoints:
            name, sep, value = item.partition("=")
            if not sep or not value:
                raise UserError(f"--endpoint {item!r}: expected NAME=VALUE, e.g. s3=http://127.0.0.1:9000")
            overrides[name.strip()] = value.strip()
        selected = select(checks)
        ctx = load_context(site, root, overrides, secrets_file, timeout)
        err = Console(stderr=True, highlight=False)
        if fmt == "text" and err.is_terminal:
            with err.status("running checks") as status:
                def show(pending: list[str], elapsed: float) -> None:
                    status.update(f"waiting {elapsed:.1f}s for: {', '.join(pending)}")

                results = run_checks(selected, ctx, on_wait=show)
        else:
            results = run_checks(selected, ctx)
        state = overall(results)
        if junit:
            write_junit(results, Path(junit))
        if fmt == "json":
            click.echo(json.dumps({"status": state.value, "checks": [r.to_dict() for r in results]}, indent=2))
        else:
            print_table(results, make_console(soft_wrap=False))
            click.echo(f"health: {state.value} ({sum(r.status == Status.FAIL for r in results)} failing, "
                       f"{sum(r.status == Status.WARN for r in results)} warning, {len(results)} checked)")
        sys.stdout.flush()
        sys.exit(1 if state == Status.FAIL else 0)
