"""What Mercure's install.sh does for a docker install: folders, env files with generated values,
services.json, the first mercure.json, the web login, and the module secret files.

Generated values (web SECRET_KEY, database and Redis passwords, bookkeeper API key, web admin) are
kept in the site's values file like every other secret (one locked writer, see
swarm.secretstore); the files Mercure reads are derived from them and readable by Mercure's uid
only. Module secret files mirror their values: a rotation rewrites them atomically."""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.mercure import config as mc
from bidsflux.mercure.files import atomic_write, mercure_lock, read_json
from bidsflux.swarm import secretstore

SECRET_KEY_KEY = "MERCURE_SECRET_KEY"
DB_PASSWORD_KEY = "MERCURE_DB_PASSWORD"
REDIS_PASSWORD_KEY = "MERCURE_REDIS_PASSWORD"
BOOKKEEPER_KEY = "MERCURE_BOOKKEEPER_API_KEY"
WEB_USER_KEY, WEB_PASSWORD_KEY = "MERCURE_WEB_USER", "MERCURE_WEB_PASSWORD"
DATA_SUBDIRS = ("incoming", "studies", "outgoing", "success", "error", "discard", "processing", "jobs")
# Mercure's compose services; the workers run two containers each, as upstream.
SERVICES = ("ui", "db", "redis", "bookkeeper", "receiver", "router", "processor", "dispatcher", "cleaner",
            "worker_fast", "worker_slow")
WORKER_REPLICAS = 2
SECRET_MODE = 0o600


def _token() -> str:
    # 32 letters and digits like install.sh's generate_secret: safe in URLs, env files and shells.
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


def owner(site: dict[str, Any]) -> tuple[int, int]:
    base = site["paths"]["mercure_base"]
    return int(base.get("uid", 0)), int(base.get("gid", 0))


def values(site: dict[str, Any]) -> dict[str, str]:
    """The site's values, with Mercure's generated ones created on first use."""
    return secretstore.ensure_values(site["secrets"]["file"], {
        SECRET_KEY_KEY: _token, DB_PASSWORD_KEY: _token, REDIS_PASSWORD_KEY: _token, BOOKKEEPER_KEY: _token,
        WEB_USER_KEY: lambda: "bidsflux_admin", WEB_PASSWORD_KEY: _token,
    })


def _mkdir(path: Path, mode: int, own: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if own is not None and os.geteuid() == 0:
        os.chown(path, *own)


def prepare_folders(site: dict[str, Any]) -> Path:
    """Mercure's folders with the owner Mercure runs as; returns the base folder."""
    base = Path(site["paths"]["mercure_base"]["path"])
    uid_gid = owner(site)
    mode = int(str(site["paths"]["mercure_base"].get("mode", "0755")), 8)
    _mkdir(base, mode, uid_gid)
    # Not world-readable: it holds mercure.json (bookkeeper key) and the env files (passwords).
    _mkdir(base / "config", 0o750, uid_gid)
    for sub in ("data", *(f"data/{d}" for d in DATA_SUBDIRS), "persistence"):
        _mkdir(base / sub, mode, uid_gid)
    # Traversable like install.sh makes it; the database's own folder inside (PGDATA) is the
    # database user's, mode 0700.
    _mkdir(base / "db", 0o711, uid_gid)
    return base


def env_files(site: dict[str, Any], vals: dict[str, str]) -> dict[str, str]:
    """config/<name> -> content, as install.sh writes them for docker (hosts are compose services)."""
    db, redis = vals[DB_PASSWORD_KEY], vals[REDIS_PASSWORD_KEY]
    return {
        "webgui.env": f"PORT=8000\nHOST=0.0.0.0\nSECRET_KEY={vals[SECRET_KEY_KEY]}\n",
        "bookkeeper.env": f"PORT=8080\nHOST=0.0.0.0\nDATABASE_URL=postgresql://mercure:{db}@db\n",
        "db.env": f"POSTGRES_PASSWORD={db}\n",
        "redis.env": f"REDIS_PASSWORD={redis}\nREDIS_URL=redis://:{redis}@redis:6379/0\n",
    }


def write_if_changed(target: Path, text: str, mode: int, own: tuple[int, int]) -> bool:
    try:
        if target.read_text(encoding="utf-8") == text:
            _restrict(target, mode)
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UserError(f"cannot read {target}: {exc.strerror}; run as root") from None
    atomic_write(target, text, mode, own)
    _restrict(target, mode)
    return True


def _restrict(target: Path, mode: int) -> None:
    """`target` and its backups get `mode` at most (older installs wrote them world-readable)."""
    for p in (target, *target.parent.glob(f"{target.name}.*.bak")):
        current = p.stat().st_mode & 0o7777
        if current & ~mode:
            os.chmod(p, current & mode)


def container_names(project: str, v1: bool) -> dict[str, list[str]]:
    """Compose's container names per service (`p_s_1` for docker-compose 1.x, `p-s-1` for v2)."""
    sep = "_" if v1 else "-"
    return {s: [sep.join((project, s, str(i))) for i in range(1, (WORKER_REPLICAS if s.startswith("worker") else 1) + 1)]
            for s in SERVICES}


def services_json(project: str, v1: bool) -> str:
    """Mercure's services.json (the UI's service page) with the names compose gives here."""
    names = container_names(project, v1)
    labels = {"receiver": "Receiver", "router": "Router", "processor": "Processor", "dispatcher": "Dispatcher",
              "cleaner": "Cleaner", "bookkeeper": "Bookkeeper", "ui": "WebUI", "redis": "Redis"}
    out: dict[str, Any] = {k: {"name": v, "systemd_service": f"mercure_{k}.service", "docker_service": names[k][0]}
                           for k, v in labels.items()}
    out["redis"]["systemd_service"] = "redis.service"
    out["workers"] = {"name": "Workers", "systemd_service": [], "docker_service": names["worker_fast"] + names["worker_slow"]}
    return json.dumps(out, indent=4) + "\n"


def install_config(site: dict[str, Any], rules: Any, config_dir: Path, vals: dict[str, str], project: str,
                   v1: bool, lock_timeout: float = 60.0) -> None:
    """Env files, services.json and a first mercure.json (with the bookkeeper key) in `config_dir`."""
    own = owner(site)
    for name, text in env_files(site, vals).items():
        write_if_changed(config_dir / name, text, SECRET_MODE, own)
    write_if_changed(config_dir / "services.json", services_json(project, v1), 0o640, own)
    target = config_dir / "mercure.json"
    with mercure_lock(target, lock_timeout):
        live = read_json(target)
        if live is None:
            live = mc.render_config(site, rules)
        if live.get("bookkeeper_api_key") in (None, "", "BOOKKEEPER_TOKEN_PLACEHOLDER"):
            live["bookkeeper_api_key"] = vals[BOOKKEEPER_KEY]
            atomic_write(target, mc.dumps(live), SECRET_MODE, own)
    _restrict(target, SECRET_MODE)


def module_secret_files(site: dict[str, Any], rules: Any) -> list[str]:
    """Each module secret as a file under the root-only mercure-secrets folder, kept equal to its
    value from now on (rewritten atomically on rotation); notes for values that do not exist yet."""
    sdir = Path(mc.secrets_dir(site))
    _mkdir(sdir, 0o700, (0, 0))  # root-only: nobody on the host but root reaches the files inside
    values_file = site["secrets"]["file"]
    stored = secretstore.read_values_file(values_file)
    uid_gid = owner(site)
    notes = []
    for module in (rules.data.get("modules") or {}).values():
        for secret in module.get("secrets") or []:
            key = secret if secret in stored or secret.upper() not in stored else secret.upper()
            # Readable by the module: Mercure runs it as its own uid, or as root with every capability
            # dropped (no DAC override), so a root module's files belong to root; the 0700 folder keeps others out.
            root_module = module.get("requires_root") or module.get("indexer")
            if not secretstore.add_mirror(values_file, sdir / secret, key, (0, 0) if root_module else uid_gid, 0o400) \
                    and not (sdir / secret).exists():
                notes.append(f"{sdir / secret} is missing: store the value of '{secret}' in {values_file} "
                             "(it is written there, and rewritten whenever it changes)")
    return notes


def _verifies(scheme: Any, password: str, hashed: str) -> bool:
    try:
        return bool(scheme.verify(password, hashed))
    except ValueError:  # another scheme (Mercure rehashes with argon2 after a login)
        return False


def web_login(site: dict[str, Any], config_dir: Path, vals: dict[str, str], lock_timeout: float) -> str:
    """Replace Mercure's seed login (admin/router) with the generated admin of the values file."""
    from passlib.hash import sha512_crypt  # one of the schemes Mercure 0.4.1's CryptContext verifies

    user, password = vals[WEB_USER_KEY], vals[WEB_PASSWORD_KEY]
    target = config_dir / "users.json"
    users = read_json(target) or {}
    current = users.get(user, {})
    if current.get("password") and _verifies(sha512_crypt, password, current["password"]) and "admin" not in users:
        _restrict(target, SECRET_MODE)
        return user
    users.pop("admin", None)  # the seed account with the published password
    users[user] = {"password": sha512_crypt.hash(password), "is_admin": "True", "change_password": "False"}
    with mercure_lock(target, lock_timeout):
        atomic_write(target, json.dumps(users, indent=4) + "\n", SECRET_MODE, owner(site))
    _restrict(target, SECRET_MODE)
    return user
