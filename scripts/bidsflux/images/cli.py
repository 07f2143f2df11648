"""`bidsflux images pin`: pin an image the site builds to the digest its registry stored."""

from __future__ import annotations

import json
import os

import click

USER_ENV = "BIDSFLUX_REGISTRY_USER"
PASSWORD_ENV = "BIDSFLUX_REGISTRY_PASSWORD"


def register(main: click.Group) -> None:
    from bidsflux.console import format_option, friendly_errors, root_option, site_option

    @main.group("images")
    def images_group() -> None:
        """Images the site builds (the dicom_indexer): pin them by digest in site.yml."""

    @images_group.command("pin")
    @site_option
    @root_option
    @click.option("--image", "key", default="dicom_indexer", show_default=True,
                  help="The images key of site.yml; every other key naming the same image is pinned too.")
    @click.option("--tag", default=None, help="The tag the build pushed (default: the tag images.KEY has now).")
    @click.option("--commit/--no-commit", "do_commit", default=True, show_default=True,
                  help="Commit site.yml when it changed (the pipeline then deploys the same image).")
    @click.option("--user-env", default=USER_ENV, show_default=True, help="Environment variable with the registry user.")
    @click.option("--password-env", default=PASSWORD_ENV, show_default=True,
                  help="Environment variable with the registry password or token (never on the command line).")
    @click.option("--ca-file", type=click.Path(dir_okay=False, exists=True), default=None,
                  help="CA bundle for the registry (default: the site's bundle, BIDSFLUX_CA_BUNDLE, CI_SERVER_TLS_CA_FILE).")
    @format_option
    @friendly_errors
    def pin_cmd(site: str | None, root: str | None, key: str, tag: str | None, do_commit: bool, user_env: str,
                password_env: str, ca_file: str | None, fmt: str) -> None:
        """Resolve images.KEY's tag (or --tag) to its digest in the registry (Registry API v2 manifest
        HEAD) and write name:tag@sha256:... into site.yml. Exit 0 pinned or already pinned, 1 error
        (the tag is not in the registry: run the build first)."""
        from bidsflux.diagnostics import UserError
        from bidsflux.images.pin import commit, resolve, write
        from bidsflux.images.registry import Credentials
        from bidsflux.proxy.trust import requests_verify
        from bidsflux.site import schemas
        from bidsflux.site.repository import open_repository
        from bidsflux.site.yamlsource import load

        repo = open_repository(site, root)
        doc = load(repo.site_file, repo.root)
        problems = schemas.check_document(doc, repo.schema_dir / "site.schema.json")
        if problems:
            raise UserError(f"{repo.shown(repo.site_file)} is not valid; run `bidsflux validate`", problems)
        user, password = os.environ.get(user_env), os.environ.get(password_env)
        credentials = Credentials(user, password) if user and password else None
        pins = resolve(doc.data["images"], key, tag, credentials=credentials,
                       verify=ca_file or requests_verify(doc.data))
        changed = write(repo.site_file, pins)
        head = commit(repo.root, repo.site_file, pins) if changed and do_commit else None
        if fmt == "json":
            click.echo(json.dumps({"pins": [{"key": p.key, "from": p.before, "to": p.after, "changed": p.changed}
                                            for p in pins], "commit": head}, indent=2))
            return
        for p in pins:
            click.echo(f"images.{p.key}: {p.before} -> {p.after}" if p.changed else f"images.{p.key}: already {p.after}")
        if head:
            click.echo(f"committed {repo.shown(repo.site_file)} ({head[:12]}); push it so the pipeline deploys the same image")
