"""Mercure's compose project: its rendered file, folders, generated secrets, web login, compose runs and waits."""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.diagnostics import UserError
from bidsflux.mercure import config as mc
from bidsflux.mercure.files import atomic_write, mercure_lock, read_json
from bidsflux.site.render import dump_yaml
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document, load

err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)  # names are never markup
COMPOSE_PROJECT = "mercure"
WEB_USER_KEY, WEB_PASSWORD_KEY = "MERCURE_WEB_USER", "MERCURE_WEB_PASSWORD"
BOOKKEEPER_KEY = "MERCURE_BOOKKEEPER_API_KEY"


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


def mercure_owner(site: dict[str, Any]) -> tuple[int, int]:
    base = site["paths"]["mercure_base"]
    return int(base.get("uid", 0)), int(base.get("gid", 0))


def prepare_folders(site: dict[str, Any], rules: Any) -> list[str]:
    """Mercure's folders with the owner Mercure runs as, and the root-only module secrets folder."""
    base = Path(site["paths"]["mercure_base"]["path"])
    uid, gid = mercure_owner(site)
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

    with mercure_lock(target, lock_timeout):
        atomic_write(target, json.dumps(users, indent=4) + "\n", 0o600, mercure_owner(site))
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


def render_mercure_compose(repo: Repository, site: Document) -> str:
    from bidsflux.site.render import TemplateRenderer, template_context  # noqa: I001

    doc = load(repo.mercure_compose, repo.root)
    renderer = TemplateRenderer(doc, template_context(site.data, lambda name: name))
    data = {k: v for k, v in renderer.value(doc.data, []).items() if not str(k).startswith("x-")}
    if renderer.errors:
        raise UserError("", renderer.errors)
    return "# Rendered by `bidsflux render` from stack/mercure/docker-compose.yml. Do not edit.\n" + dump_yaml(data)


def site_data_doc(repo: Any) -> Any:
    from bidsflux.site.yamlsource import load

    return load(repo.site_file, repo.root)
