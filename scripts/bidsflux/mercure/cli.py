"""`bidsflux mercure render|plan|push|up`: Mercure's configuration and its compose project as code."""
from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import click

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.mercure import config as mc
from bidsflux.mercure.apply import check_model, config_dir_of, load_rules, push, report_unmanaged, wanted_config
from bidsflux.mercure.compose import (
    BOOKKEEPER_KEY,
    compose_command,
    err,
    mercure_owner,
    prepare_folders,
    read_secret_file,
    render_mercure_compose,
    run_compose,
    site_data_doc,
    store_secrets,
    wait_healthy,
    web_login,
)
from bidsflux.mercure.files import atomic_write, mercure_lock, read_json


def register(main: click.Group) -> None:
    @main.group()
    def mercure() -> None:
        """Mercure's rules, modules and targets from stack/mercure/rules.yml, and its compose project."""

    config_dir_option = click.option("--config-dir", type=click.Path(file_okay=False), default=None,
                                     help="Mercure's config folder (default: paths.mercure_base/config).")

    @mercure.command("render")
    @site_option
    @root_option
    @friendly_errors
    def render_cmd(site: str | None, root: str | None) -> None:
        """Print the mercure.json the managed parts produce on top of Mercure's defaults."""
        repo, site_data, rules = load_rules(site, root)
        config = mc.render_config(site_data, rules)
        check_model(config, repo.schema_dir, "the rendered mercure.json")
        click.echo(mc.dumps(mc.redact(config)), nl=False)

    @mercure.command("plan")
    @site_option
    @root_option
    @config_dir_option
    @click.option("--prune", is_flag=True, help="Also remove rules, modules and targets not in rules.yml.")
    @format_option
    @friendly_errors
    def plan_cmd(site: str | None, root: str | None, config_dir: str | None, prune: bool, fmt: str) -> None:
        """Show what `push` would change in the live mercure.json. Exit 0 none, 2 changes, 1 error."""
        repo, site_data, rules = load_rules(site, root)
        target = config_dir_of(site_data, config_dir) / "mercure.json"
        live = read_json(target)
        wanted = wanted_config(repo, site_data, rules, live, prune)
        if fmt == "json":
            found = mc.changes(live, wanted)
            click.echo(json.dumps({"file": str(target), "exists": live is not None, "changes": found}, indent=2, sort_keys=True))
            sys.exit(2 if found else 0)
        report_unmanaged(live, repo, site_data, rules, prune)
        if live == wanted:
            click.echo(f"{target}: no changes")
            sys.exit(0)
        if live is None:
            click.echo(f"{target} does not exist; push would create it from Mercure's defaults")
        click.echo(mc.diff(live, wanted), nl=False)
        changed = mc.receiver_changed(live or {}, wanted) if live is not None else []
        if changed:
            click.echo(f"receiver settings change ({', '.join(changed)}): push restarts the receiver")
        sys.exit(2)

    @mercure.command("push")
    @site_option
    @root_option
    @config_dir_option
    @click.option("--prune", is_flag=True, help="Also remove rules, modules and targets not in rules.yml.")
    @click.option("--lock-timeout", type=float, default=60.0, show_default=True,
                  help="Seconds to wait while someone else holds mercure.lock.")
    @click.option("--no-restart", is_flag=True, help="Do not restart the receiver when its settings change.")
    @format_option
    @friendly_errors
    def push_cmd(site: str | None, root: str | None, config_dir: str | None, prune: bool,
                 lock_timeout: float, no_restart: bool, fmt: str) -> None:
        """Merge the managed parts into the live mercure.json (under Mercure's lock, atomically)."""
        from bidsflux.console import make_console

        repo, site_data, rules = load_rules(site, root)
        cdir = config_dir_of(site_data, config_dir)
        report_unmanaged(read_json(cdir / "mercure.json"), repo, site_data, rules, prune)
        changed = push(repo, site_data, rules, cdir, lock_timeout, prune, restart=not no_restart,
                       out=make_console(stderr=fmt == "json"))
        if fmt == "json":
            click.echo(json.dumps({"file": str(cdir / "mercure.json"), "changed": changed}, indent=2))

    @mercure.command("up")
    @site_option
    @root_option
    @click.option("--output", type=click.Path(file_okay=False), default=None,
                  help="Where the rendered compose file goes (default: paths.mercure_base).")
    @click.option("--check-only", is_flag=True,
                  help="Render, create folders and validate with `compose config`, but start nothing.")
    @click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for health.")
    @friendly_errors
    def up_cmd(site: str | None, root: str | None, output: str | None, check_only: bool, timeout: float) -> None:
        """Render Mercure's compose file, create its folders, start it and secure its web login."""
        repo, site_data, rules = load_rules(site, root)
        base = Path(site_data["paths"]["mercure_base"]["path"])
        out_dir = Path(output) if output else base
        out_dir.mkdir(parents=True, exist_ok=True)
        compose_file = out_dir / "docker-compose.yml"
        text = render_mercure_compose(repo, site_data_doc(repo))
        if compose_command() == ["docker-compose"]:
            # Debian's docker-compose 1.x rejects the top-level `name`; -p gives the project name.
            import yaml

            from bidsflux.site.render import dump_yaml

            data = yaml.safe_load(text)
            data.pop("name", None)
            text = text.splitlines(keepends=True)[0] + dump_yaml(data)
        compose_file.write_text(text, encoding="utf-8")
        notes = prepare_folders(site_data, rules)
        config_dir = base / "config"
        secret_file = Path(site_data["secrets"]["file"])
        if not (config_dir / "mercure.json").exists():
            store_secrets(secret_file, {BOOKKEEPER_KEY: secrets.token_hex(16)})
            initial = mc.render_config(site_data, rules)
            initial["bookkeeper_api_key"] = read_secret_file(secret_file)[BOOKKEEPER_KEY]
            with mercure_lock(config_dir / "mercure.json", 60):
                atomic_write(config_dir / "mercure.json", mc.dumps(initial), 0o644, mercure_owner(site_data))
        db_pw = base / "secrets" / "mercure_db_password"
        if not db_pw.exists():
            store_secrets(secret_file, {"MERCURE_DB_PASSWORD": secrets.token_urlsafe(24)})
            fd = os.open(db_pw, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o400)
            with os.fdopen(fd, "w") as fh:
                fh.write(read_secret_file(secret_file)["MERCURE_DB_PASSWORD"])
        user = web_login(site_data, config_dir, 60)
        run_compose(compose_file, "config", "--quiet")
        for n in notes:
            err.print(f"note: {n}")
        click.echo(f"rendered {compose_file}; folders ready under {base}; web login '{user}' "
                   f"(password in {secret_file})")
        if check_only:
            return
        run_compose(compose_file, "up", "-d")
        wait_healthy(timeout)
        click.echo("Mercure is up and healthy")


