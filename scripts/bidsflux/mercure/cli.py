"""`bidsflux mercure render|plan|push|up`: Mercure's configuration and its compose project as code."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.cli import format_option, friendly_errors, root_option, site_option
from bidsflux.diagnostics import UserError
from bidsflux.mercure import config as mc
from bidsflux.mercure.files import atomic_write, mercure_lock, read_json

err = Console(stderr=True, highlight=False, soft_wrap=True)
COMPOSE_PROJECT = "mercure"
WEB_USER_KEY, WEB_PASSWORD_KEY = "MERCURE_WEB_USER", "MERCURE_WEB_PASSWORD"
BOOKKEEPER_KEY = "MERCURE_BOOKKEEPER_API_KEY"


def _load(site: str | None, root: str | None) -> tuple[Any, dict[str, Any], Any]:
    """Repository, site data and the rules document, after `validate` found nothing wrong."""
    from bidsflux.site.repository import open_repository
    from bidsflux.site.yamlsource import load
    from bidsflux.swarm.stackfile import load_valid

    repo = open_repository(site, root)
    site_doc, _ = load_valid(repo)
    return repo, site_doc.data, load(repo.mercure_rules, repo.root)


def _config_dir(site: dict[str, Any], override: str | None) -> Path:
    return Path(override) if override else Path(site["paths"]["mercure_base"]["path"]) / "config"


def _check_model(config: dict[str, Any], schema_dir: Path, what: str) -> None:
    problems = mc.model_problems(config, schema_dir)
    if problems:
        raise UserError(f"{what} would not load in Mercure; nothing was written:\n  " + "\n  ".join(problems))


def _wanted(repo: Any, site: dict[str, Any], rules: Any, live: dict[str, Any] | None, prune: bool) -> dict[str, Any]:
    managed = mc.managed_config(site, rules)
    wanted = mc.merge(live if live is not None else mc.MERCURE_DEFAULTS, managed, prune=prune)
    _check_model(wanted, repo.schema_dir, "the merged mercure.json")
    return wanted


def _report_unmanaged(live: dict[str, Any] | None, repo: Any, site: dict[str, Any], rules: Any, prune: bool) -> None:
    if live is None:
        return
    extra = mc.unmanaged_entries(live, mc.managed_config(site, rules))
    for section, names in extra.items():
        verb = "removed (--prune)" if prune else "kept (not in stack/mercure/rules.yml; --prune removes them)"
        err.print(f"{section}: {', '.join(names)} {verb}")


def restart_receiver(project: str = COMPOSE_PROJECT) -> list[str]:
    """Restart the receiver container(s) of the compose project; names restarted."""
    from docker.errors import APIError

    from bidsflux.swarm.secretstore import docker_client

    client = docker_client()
    try:
        found = client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                          "com.docker.compose.service=receiver"]})
        for c in found:
            c.restart(timeout=30)
    except APIError as exc:
        raise UserError(f"cannot restart Mercure's receiver: {exc.explanation or exc}") from None
    return [c.name for c in found]


def push(repo: Any, site: dict[str, Any], rules: Any, config_dir: Path, lock_timeout: float,
         prune: bool = False, restart: bool = True, out: Console | None = None) -> bool:
    """Merge the managed parts into config_dir/mercure.json. True when the file changed."""
    out = out or Console(highlight=False, soft_wrap=True)
    target = config_dir / "mercure.json"
    if not config_dir.is_dir():
        raise UserError(f"{config_dir} does not exist: start Mercure first (`bidsflux mercure up`) or pass --config-dir")
    live = read_json(target)
    wanted = _wanted(repo, site, rules, live, prune)
    if live == wanted:
        out.print("mercure.json is up to date; nothing to push")
        return False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"waiting for {target.with_suffix('.lock')} (held by someone else; "
                                 f"timeout {lock_timeout:g}s)", visible=False)

        def on_wait(_: float) -> None:
            progress.update(task, visible=True)

        with mercure_lock(target, lock_timeout, on_wait):
            progress.update(task, visible=False)
            # Re-read under the lock: the GUI may have saved while we waited.
            live = read_json(target)
            wanted = _wanted(repo, site, rules, live, prune)
            if live == wanted:
                out.print("mercure.json is up to date; nothing to push")
                return False
            out.print(mc.diff(live, wanted), end="", markup=False)
            owner = (site["paths"]["mercure_base"].get("uid", 0), site["paths"]["mercure_base"].get("gid", 0))
            backup = atomic_write(target, mc.dumps(wanted), 0o644, owner if live is None else None)
    out.print(f"wrote {target}" + (f" (previous version kept as {backup.name})" if backup else ""))
    changed = mc.receiver_changed(live or {}, wanted) if live is not None else []
    if changed:
        if not restart:
            out.print(f"receiver settings changed ({', '.join(changed)}): restart its container to apply them")
        else:
            try:
                names = restart_receiver()
            except UserError as exc:
                raise UserError(f"mercure.json was written, but the receiver, which reads {', '.join(changed)} "
                                f"only at start, was not restarted: {exc}") from None
            out.print(f"receiver settings changed ({', '.join(changed)}); restarted {', '.join(names) or 'no running receiver'}")
    return True


# ---- secrets kept in the site's root-only secrets file (KEY=VALUE lines) -----------------------

def read_secret_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; run as root") from None
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def store_secrets(path: Path, values: dict[str, str]) -> None:
    """Add values to the secrets file (created 0600); existing keys are never overwritten."""
    current = read_secret_file(path)
    new = {k: v for k, v in values.items() if k not in current}
    if not new:
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        for k, v in new.items():
            fh.write(f"{k}={v}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o600)


def _owner(site: dict[str, Any]) -> tuple[int, int]:
    base = site["paths"]["mercure_base"]
    return int(base.get("uid", 0)), int(base.get("gid", 0))


def prepare_folders(site: dict[str, Any], rules: Any) -> list[str]:
    """Mercure's folders with the owner Mercure runs as, and the root-only module secrets folder."""
    base = Path(site["paths"]["mercure_base"]["path"])
    uid, gid = _owner(site)
    mode = int(str(site["paths"]["mercure_base"].get("mode", "0755")), 8)
    notes = []
    for sub in ("", "config", "data", "db", "secrets", *(f"data/{d}" for d in (
            "incoming", "studies", "outgoing", "success", "error", "discard", "processing", "jobs"))):
        p = base / sub
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o700 if sub in ("db", "secrets") else mode)
        if os.geteuid() == 0:
            os.chown(p, uid, gid)
    sdir = Path(mc.secrets_dir(site))
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)  # root-only: nobody on the host but root reaches the files inside
    if os.geteuid() == 0:
        os.chown(sdir, 0, 0)
    stored = read_secret_file(Path(site["secrets"]["file"]))
    for module in (rules.data.get("modules") or {}).values():
        for secret in module.get("secrets") or []:
            f = sdir / secret
            value = stored.get(secret) or stored.get(secret.upper())
            if f.exists():
                continue
            if value is None:
                notes.append(f"{f} is missing: write the value of '{secret}' there (mode 0400, owner {uid}:{gid})")
                continue
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o400)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(value)
            # Readable by the module, which Mercure runs as its own uid; the 0700 folder keeps others out.
            if os.geteuid() == 0:
                os.chown(f, uid, gid)
    return notes


def web_login(site: dict[str, Any], config_dir: Path, lock_timeout: float) -> str:
    """Replace Mercure's seed login (admin/router) with a generated admin stored in the secrets file."""
    from passlib.apps import custom_app_context

    secret_file = Path(site["secrets"]["file"])
    stored = read_secret_file(secret_file)
    if WEB_PASSWORD_KEY not in stored:
        store_secrets(secret_file, {WEB_USER_KEY: "bidsflux_admin", WEB_PASSWORD_KEY: secrets.token_urlsafe(24)})
        stored = read_secret_file(secret_file)
    user, password = stored[WEB_USER_KEY], stored[WEB_PASSWORD_KEY]
    target = config_dir / "users.json"
    users = read_json(target) or {}
    current = users.get(user, {})
    if current.get("password") and custom_app_context.verify(password, current["password"]) and "admin" not in users:
        return user
    users.pop("admin", None)  # the seed account with the published password
    users[user] = {"password": custom_app_context.hash(password), "is_admin": "True", "change_password": "False"}
    import json

    with mercure_lock(target, lock_timeout):
        atomic_write(target, json.dumps(users, indent=4) + "\n", 0o600, _owner(site))
    return user


def compose_command() -> list[str]:
    """`docker compose` when the plugin exists, else Debian's `docker-compose`."""
    import shutil

    import sh

    if shutil.which("docker"):
        try:
            sh.docker("compose", "version", _ok_code=[0])
            return ["docker", "compose"]
        except sh.ErrorReturnCode:
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise UserError("neither `docker compose` nor `docker-compose` is installed: apt-get install docker-compose "
                    "(or the docker-compose-plugin package)")


def run_compose(compose_file: Path, *args: str) -> str:
    import sh

    cmd = compose_command()
    try:
        return str(sh.Command(cmd[0])(*cmd[1:], "-p", COMPOSE_PROJECT, "-f", str(compose_file), *args,
                                      _err_to_out=True, _env={**os.environ}))
    except sh.ErrorReturnCode as exc:
        text = exc.stdout.decode(errors="replace").strip().splitlines()
        raise UserError(f"{' '.join(cmd)} {' '.join(args)} failed: " + " | ".join(text[-5:])) from None


def wait_healthy(timeout: float) -> None:
    from bidsflux.swarm.secretstore import docker_client

    client = docker_client()
    start = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as p:
        task = p.add_task("waiting for Mercure's containers to be running and healthy")
        while True:
            cs = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={COMPOSE_PROJECT}"})
            pending = [c.name for c in cs if c.status != "running"
                       or (c.attrs.get("State", {}).get("Health", {}) or {}).get("Status", "healthy") != "healthy"]
            if cs and not pending:
                return
            if time.monotonic() - start > timeout:
                raise UserError(f"Mercure not healthy after {timeout:g}s: {', '.join(pending) or 'no containers'}; "
                                f"see `docker compose -p {COMPOSE_PROJECT} logs`")
            p.update(task, description=f"waiting for {', '.join(pending) or 'containers'} ({timeout:g}s timeout)")
            time.sleep(2)


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
        repo, site_data, rules = _load(site, root)
        config = mc.render_config(site_data, rules)
        _check_model(config, repo.schema_dir, "the rendered mercure.json")
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
        repo, site_data, rules = _load(site, root)
        target = _config_dir(site_data, config_dir) / "mercure.json"
        live = read_json(target)
        wanted = _wanted(repo, site_data, rules, live, prune)
        if fmt == "json":
            found = mc.changes(live, wanted)
            click.echo(json.dumps({"file": str(target), "exists": live is not None, "changes": found}, indent=2, sort_keys=True))
            sys.exit(2 if found else 0)
        _report_unmanaged(live, repo, site_data, rules, prune)
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
    @friendly_errors
    def push_cmd(site: str | None, root: str | None, config_dir: str | None, prune: bool,
                 lock_timeout: float, no_restart: bool) -> None:
        """Merge the managed parts into the live mercure.json (under Mercure's lock, atomically)."""
        repo, site_data, rules = _load(site, root)
        cdir = _config_dir(site_data, config_dir)
        _report_unmanaged(read_json(cdir / "mercure.json"), repo, site_data, rules, prune)
        push(repo, site_data, rules, cdir, lock_timeout, prune, restart=not no_restart)

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
        from bidsflux.swarm.stackfile import render_mercure_compose

        repo, site_data, rules = _load(site, root)
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
                atomic_write(config_dir / "mercure.json", mc.dumps(initial), 0o644, _owner(site_data))
        db_pw = base / "secrets" / "mercure_db_password"
        if not db_pw.exists():
            store_secrets(secret_file, {"MERCURE_DB_PASSWORD": secrets.token_urlsafe(24)})
            fd = os.open(db_pw, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o400)
            with os.fdopen(fd, "w") as fh:
                fh.write(read_secret_file(secret_file)["MERCURE_DB_PASSWORD"])
        user = web_login(site_data, config_dir, 60)
        run_compose(compose_file, "config", "--quiet")
        for n in notes:
            err.print(f"[yellow]note:[/] {n}")
        click.echo(f"rendered {compose_file}; folders ready under {base}; web login '{user}' "
                   f"(password in {secret_file})")
        if check_only:
            return
        run_compose(compose_file, "up", "-d")
        wait_healthy(timeout)
        click.echo("Mercure is up and healthy")


def site_data_doc(repo: Any) -> Any:
    from bidsflux.site.yamlsource import load

    return load(repo.site_file, repo.root)
