"""`bidsflux mercure render|plan|push|up`: Mercure's configuration and its compose project as code."""
from __future__ import annotations

import json
import sys

import click

from bidsflux.console import format_option, friendly_errors, root_option, site_option
from bidsflux.mercure import config as mc
from bidsflux.mercure import install
from bidsflux.mercure.apply import check_model, config_dir_of, load_rules, push, report_unmanaged, wanted_config
from bidsflux.mercure.compose import (
    check_data_volume,
    compose_command,
    err,
    render_mercure_compose,
    run_compose,
    site_data_doc,
    wait_healthy,
    write_dotenv,
)
from bidsflux.mercure.files import read_json


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
    @click.option("--project-name", default=None,
                  help="Compose project name (default: the one of the last `up`, else `mercure`).")
    @click.option("--check-only", is_flag=True,
                  help="Render, create folders and files and validate with `compose config`, but start nothing.")
    @click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for health.")
    @friendly_errors
    def up_cmd(site: str | None, root: str | None, project_name: str | None, check_only: bool, timeout: float) -> None:
        """Render Mercure's compose project with its env files and generated secrets, start it,
        wait until every service is healthy, and replace the seed web login."""
        from bidsflux.mercure.compose import project_of

        repo, site_data, rules = load_rules(site, root)
        project = project_name or project_of(site_data)
        v1 = compose_command() == ["docker-compose"]
        base = install.prepare_folders(site_data)
        compose_file = base / "docker-compose.yml"
        text = render_mercure_compose(repo, site_data_doc(repo), v1=v1)
        vals = install.values(site_data)
        config_dir = base / "config"
        install.install_config(site_data, rules, config_dir, vals, project, v1)
        notes = install.module_secret_files(site_data, rules)
        user = install.web_login(site_data, config_dir, vals, 60)
        if not compose_file.exists() or compose_file.read_text(encoding="utf-8") != text:
            compose_file.write_text(text, encoding="utf-8")
        write_dotenv(base, project)
        run_compose(compose_file, project, "config", "--quiet")
        for n in notes:
            err.print(f"note: {n}")
        click.echo(f"rendered {compose_file} (project {project}); folders and env files ready under {base}; "
                   f"web login '{user}' (password in {site_data['secrets']['file']})")
        if check_only:
            return
        check_data_volume(base / "data")
        run_compose(compose_file, project, "up", "-d", "--remove-orphans")
        wait_healthy(project, timeout)
        click.echo(f"Mercure is up: every service of project {project} is running and healthy")
