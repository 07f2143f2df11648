"""`bidsflux canary`: the data path end to end (send, index, push, annex), exit 0 or 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click


def write_junit(outcome: Any, path: Path) -> None:
    """One test case per stage; stages after the failing one are skipped."""
    from junitparser import Failure, JUnitXml, Skipped, TestCase, TestSuite

    from bidsflux.canary.run import STAGES

    suite = TestSuite("bidsflux canary")
    by_name = {s.name: s for s in outcome.stages}
    for name in STAGES:
        s = by_name.get(name)
        case = TestCase(name, classname="bidsflux.canary", time=s.seconds if s else 0.0)
        if s is None or s.status == "skipped":
            case.result = [Skipped(message="an earlier stage failed")]
        elif s.status == "fail":
            failure = Failure(message=s.message, type_="fail")
            failure.text = f"{s.message}\nfix: {s.fix}"
            case.result = [failure]
        else:
            case.system_out = s.message
        suite.add_testcase(case)
    xml = JUnitXml()
    xml.add_testsuite(suite)
    xml.write(str(path))


def health_report(outcome: Any) -> dict[str, Any]:
    """The verdict in `bidsflux health --format json`'s shape, so `bidsflux ci issues --kind health`
    opens, updates or closes one issue for the canary."""
    failed = outcome.failed
    check = {"name": "canary", "status": "ok" if outcome.ok else "fail",
             "reason": f"{failed.name}: {failed.message}" if failed else "the data path works end to end",
             "fix": failed.fix if failed else "",
             "details": [f"{s.name}: {s.status} {s.message}".rstrip() for s in outcome.stages] + outcome.cleanup}
    return {"status": check["status"], "checks": [check],
            "project": outcome.project, "s3_prefix": outcome.s3_prefix}


def register(main: click.Group) -> None:
    from bidsflux.console import format_option, friendly_errors, root_option, site_option

    @main.command("canary")
    @click.option("--timeout", type=click.FloatRange(min=1), default=None,
                  help="Seconds to wait for the dataset (default: the endpoint's study timeout + 240).")
    @click.option("--endpoint", "endpoints", multiple=True, metavar="NAME=VALUE",
                  help="Reach gitlab, s3 or dicom elsewhere than site.yml says; also BIDSFLUX_ENDPOINT_<NAME>.")
    @click.option("--secrets-file", type=click.Path(dir_okay=False), default=None,
                  help="Secrets file (default: secrets.file of site.yml); BIDSFLUX_SECRET_<NAME> override it.")
    @click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Also write a JUnit report (one case per stage).")
    @click.option("--keep", is_flag=True, help="Leave the canary's GitLab group and S3 objects (to look at them).")
    @format_option
    @site_option
    @root_option
    @friendly_errors
    def canary(timeout: float | None, endpoints: tuple[str, ...], secrets_file: str | None, junit: str | None,
               keep: bool, fmt: str, site: str | None, root: str | None) -> None:
        """Send a synthetic study (patient BIDSFLUX^CANARY) to the DICOM endpoint, wait for its dataset in
        GitLab and its annexed content in S3, verify the checksum, then remove what it made.

        Exit 0 when every stage passed; 1 naming the stage that failed (send, index, push, annex) and its fix."""
        from bidsflux.canary.run import CanaryConfig, run
        from bidsflux.diagnostics import UserError
        from bidsflux.health.context import load_context

        overrides = {}
        for item in endpoints:
            name, sep, value = item.partition("=")
            if not sep or name not in ("gitlab", "s3", "dicom"):
                raise UserError(f"--endpoint {item!r}: expected gitlab=URL, s3=URL or dicom=HOST:PORT")
            overrides[name] = value
        ctx = load_context(site, root, overrides, secrets_file, None)
        names = {"dicom_bot_gitlab_token": None, "s3_id": None, "s3_secret": None}
        values = {n: ctx.secrets.get(n) for n in names}
        missing = [n for n, v in values.items() if not v]
        if missing:
            raise UserError(f"the canary needs {', '.join(missing)}: " + ctx.secrets.how_to_provide(missing[0]))
        cfg = CanaryConfig(
            site=ctx.site, gitlab_url=ctx.endpoints["gitlab"], gitlab_token=str(values["dicom_bot_gitlab_token"]),
            s3_endpoint=ctx.endpoints["s3"], s3_keys=(str(values["s3_id"]), str(values["s3_secret"])),
            dicom=ctx.endpoints["dicom"], keep=keep,
            timeout=timeout if timeout is not None else float(ctx.site["dicom_endpoint"].get("study_timeout", 60)) + 240)
        text = fmt == "text"
        outcome = run(cfg, progress=(lambda line: click.echo(line, err=True)) if text else (lambda _: None))
        if junit:
            write_junit(outcome, Path(junit))
        if not text:
            click.echo(json.dumps(health_report(outcome), indent=2))
        else:
            for line in outcome.cleanup:
                click.echo(f"cleanup: {line}")
            failed = outcome.failed
            if failed:
                click.echo(f"canary: FAILED at {failed.name}: {failed.message}\nfix: {failed.fix}")
            else:
                click.echo(f"canary: ok ({outcome.project}, {outcome.s3_prefix})")
        sys.stdout.flush()
        sys.exit(0 if outcome.ok else 1)
