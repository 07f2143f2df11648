"""`bidsflux doctor`: bootstrap's preflight on its own, read-only, on any node (manager, worker or
a host not yet in a swarm), any time; each failure says what to do about it."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from bidsflux.console import format_option, friendly_errors, make_console, root_option, site_option
from bidsflux.diagnostics import UserError
from bidsflux.swarm import preflight
from bidsflux.swarm.preflight import Finding


def _engine_findings() -> tuple[list[Finding], Any]:
    from bidsflux.swarm.secretstore import docker_client

    try:
        client = docker_client()
    except UserError as exc:
        return [Finding("fail", "engine", str(exc))], None
    findings = preflight.check_engine(client)
    state, manager = preflight.swarm_state(client)
    if state == "active":
        findings.append(Finding("ok", "swarm", "this node is a swarm " + ("manager" if manager else "worker")))
    elif state == "inactive":
        findings.append(Finding("warn", "swarm", "this node is in no swarm",
                                "on the data server: bidsflux bootstrap; on a worker: the command "
                                "`bidsflux swarm join-command` prints on the manager"))
    else:
        findings += preflight.check_swarm(client)
    return findings, client


def _site_findings(site: str | None, root: str | None, client: Any) -> list[Finding]:
    from bidsflux.site.render import render_stack
    from bidsflux.site.repository import open_repository
    from bidsflux.validation import load_valid

    if site is None and root is None:
        from pathlib import Path

        from bidsflux.site.repository import find_root

        if find_root(Path.cwd()) is None:
            # a worker often has no copy of the repository: the node checks above still hold
            return [Finding("warn", "site", "no bidsflux repository here: data folders and ports not checked",
                            "run from a checkout of the site repository, or pass --root DIR")]
    try:
        repo = open_repository(site, root)
        site_doc, template = load_valid(repo)
        rendered = render_stack(site_doc.data, template, {}).data
    except UserError as exc:
        return [Finding("fail", "site", str(exc).splitlines()[0], "run bidsflux validate")]
    ours: set[int] = set()
    if client is not None:
        stack = site_doc.data["site"]["name"]
        try:
            services = client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"})
            ours = {int(p["PublishedPort"]) for s in services
                    for p in (s["Spec"].get("EndpointSpec") or {}).get("Ports") or [] if p.get("PublishedPort")}
        except Exception:  # noqa: BLE001 - a worker cannot list services: no port is known to be ours
            ours = set()
    dirs = preflight.data_dirs(site_doc.data, rendered)
    health = site_doc.data.get("health") or {}
    from bidsflux.site.endpoints import docker_readonly_socket

    return (preflight.check_dirs(dirs, create=False)
            + preflight.check_readonly_api(docker_readonly_socket(site_doc.data))
            + preflight.check_ports(preflight.published_ports(rendered), ours)
            + preflight.check_disk(dirs, int(health.get("disk_warn_percent", 80)),
                                   int(health.get("disk_fail_percent", 90))))


def run_doctor(site: str | None, root: str | None) -> list[Finding]:
    findings, client = _engine_findings()
    privileges = preflight.check_privileges()
    if privileges[0].level == "fail":
        # doctor itself needs no root; bootstrap and deploy do
        privileges = [Finding("warn", "privileges", "not root: bootstrap and folder fixes need root",
                              "run bootstrap with sudo")]
    findings += privileges
    findings += preflight.check_tools()
    findings += _site_findings(site, root, client)
    return findings


def register(main: click.Group) -> None:
    @main.command()
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def doctor(site: str | None, root: str | None, fmt: str) -> None:
        """Check this node as bootstrap's preflight does, changing nothing: Docker engine and
        version, swarm membership, privileges, tools, data folders (owner and mode), published
        ports free, disk space."""
        findings = run_doctor(site, root)
        failed = any(f.level == "fail" for f in findings)
        if fmt == "json":
            click.echo(json.dumps([asdict(f) for f in findings], indent=2))
            sys.exit(1 if failed else 0)
        table = Table(title="bidsflux doctor")
        for col in ("check", "result", "detail"):
            table.add_column(col, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for f in findings:
            table.add_row(f.check, Text(f.level, style=colour[f.level]),
                          f.message + (f"\nfix: {f.fix}" if f.fix else ""))
        make_console(soft_wrap=False).print(table)
        sys.exit(1 if failed else 0)
