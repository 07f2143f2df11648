"""TLS commands: `bidsflux tls plan|apply|rotate` (certificates, the proxy's Caddyfile, client trust)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.diagnostics import UserError


def _engine() -> tuple[Any | None, str]:
    """docker-py client when a swarm manager answers here, else None and why."""
    from bidsflux.swarm.secretstore import docker_client

    try:
        client = docker_client()
        if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
            return None, "this engine is not a swarm manager: the tls_ca_bundle secret is not checked"
        return client, ""
    except UserError as exc:
        return None, f"{str(exc).splitlines()[0]}: the tls_ca_bundle secret is not checked"


def _run(site_path: str | None, root: str | None, fmt: str, dry_run: bool, rotate: bool = False,
         rotate_ca: bool = False, timeout: float = 300) -> None:
    from bidsflux.proxy.apply import run, swarm_reloader
    from bidsflux.proxy.plan import format_plan
    from bidsflux.site.repository import open_repository
    from bidsflux.validation import load_valid

    repo = open_repository(site_path, root)
    site_doc, _ = load_valid(repo)
    site = site_doc.data
    # Progress and notes on stderr: stdout carries only the plan (JSON with --format json).
    console = Console(highlight=False, soft_wrap=True, stderr=True)
    client, why = _engine()
    if why:
        console.print(f"note: {why}", markup=False)
    reloader = swarm_reloader(client, site["site"]["name"]) if client is not None else None
    plan, done = run(site, repo.root, console, client, reloader, dry_run=dry_run, rotate=rotate,
                     rotate_ca=rotate_ca, timeout=timeout)
    if fmt == "json":
        click.echo(plan.to_json())
    else:
        for line in format_plan(plan):
            click.echo(line)
        for line in done:
            click.echo(f"done: {line}")
    sys.exit(2 if dry_run and not plan.empty else 0)


def register(main: click.Group) -> None:
    @main.group()
    def tls() -> None:
        """TLS: the site's certificates, the proxy's Caddyfile and the CA every client trusts."""

    @tls.command("plan")
    @site_option
    @root_option
    @format_option
    @friendly_errors
    def plan_cmd(site: str | None, root: str | None, fmt: str) -> None:
        """What `tls apply` would change. Exit 0 no change, 2 changes, 1 error."""
        _run(site, root, fmt, dry_run=True)

    @tls.command("apply")
    @site_option
    @root_option
    @format_option
    @click.option("--timeout", type=float, default=300, show_default=True,
                  help="Seconds to wait for services that move to a new CA bundle.")
    @friendly_errors
    def apply_cmd(site: str | None, root: str | None, fmt: str, timeout: float) -> None:
        """Make the CA and certificate, write the Caddyfile and the CA bundle, reload the proxy in place.

        Run on the manager (the data server) as root; re-running changes nothing when all is current."""
        _run(site, root, fmt, dry_run=False, timeout=timeout)

    @tls.command("rotate")
    @site_option
    @root_option
    @format_option
    @click.option("--ca", "rotate_ca", is_flag=True,
                  help="Also replace the site CA: clients trust old and new CA, then the proxy switches.")
    @click.option("--timeout", type=float, default=300, show_default=True,
                  help="Seconds to wait for services that move to a new CA bundle.")
    @friendly_errors
    def rotate_cmd(site: str | None, root: str | None, fmt: str, rotate_ca: bool, timeout: float) -> None:
        """Issue a new proxy certificate now (site CA), or install the site's replaced files; the
        proxy reloads in place, so no request fails. ACME certificates are renewed by Caddy itself."""
        _run(site, root, fmt, dry_run=False, rotate=True, rotate_ca=rotate_ca, timeout=timeout)
