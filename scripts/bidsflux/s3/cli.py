"""`bidsflux s3 plan|apply`: the indexer's MinIO user, policy and buckets."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click


def _endpoint(site: dict[str, Any], given: str | None) -> str:
    # MinIO's API port as published on the data server (stack template: ports.s3_api -> 9000).
    return given or os.environ.get("BIDSFLUX_ENDPOINT_S3") or f"http://{site['hosts']['s3']}:{site['ports']['s3_api']}"


def _load(site_path: str | None, root: str | None, endpoint: str | None, ca_file: str | None):  # type: ignore[no-untyped-def]
    from bidsflux.diagnostics import UserError
    from bidsflux.s3 import admin, state
    from bidsflux.site import schemas
    from bidsflux.site.repository import open_repository
    from bidsflux.site.yamlsource import load

    repo = open_repository(site_path, root)
    doc = load(repo.site_file, repo.root)
    problems = schemas.check_document(doc, repo.schema_dir / "site.schema.json")
    if problems:
        raise UserError(f"{repo.shown(repo.site_file)} is not valid; run `bidsflux validate`", problems)
    values = state.secret_values(doc.data)
    want = state.desired(doc.data, values)
    clients = admin.connect(_endpoint(doc.data, endpoint), state.root_credentials(values), ca_file)
    have = admin.observe(clients, want)
    return clients, want, have, state.diff(want, have)


def s3_options(func: Any) -> Any:
    from bidsflux.console import root_option, site_option

    func = click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
                        help="CA bundle for an https endpoint (default: SSL_CERT_FILE, else certifi's).")(func)
    func = click.option("--endpoint", default=None,
                        help="S3 API URL (default: BIDSFLUX_ENDPOINT_S3, else http://hosts.s3:ports.s3_api).")(func)
    return site_option(root_option(func))


def register(main: click.Group) -> None:
    from bidsflux.console import format_option, friendly_errors

    @main.group("s3")
    def s3_group() -> None:
        """MinIO for the indexer: its own user (s3_id/s3_secret), a policy limited to the site's buckets."""

    @s3_group.command("plan")
    @s3_options
    @format_option
    @friendly_errors
    def plan_cmd(site: str | None, root: str | None, endpoint: str | None, ca_file: str | None, fmt: str) -> None:
        """Show what `apply` would change. Exit 0: nothing; 2: changes pending; 1: error."""
        _, _, _, plan = _load(site, root, endpoint, ca_file)
        click.echo(plan.to_json() if fmt == "json" else "\n".join(plan.lines()))
        sys.exit(0 if plan.empty else 2)

    @s3_group.command("apply")
    @s3_options
    @format_option
    @friendly_errors
    def apply_cmd(site: str | None, root: str | None, endpoint: str | None, ca_file: str | None, fmt: str) -> None:
        """Make MinIO match: buckets, the indexer policy, the user with the current s3_id/s3_secret
        (after `bidsflux secrets rotate s3_id s3_secret` too), earlier indexer keys removed."""
        from bidsflux.s3 import admin

        clients, want, have, plan = _load(site, root, endpoint, ca_file)
        done = admin.apply(clients, want, have, plan)
        if fmt == "json":
            click.echo(json.dumps({"applied": done}, indent=2))
        else:
            click.echo("\n".join(done or ["MinIO matches the site: no change"]))
