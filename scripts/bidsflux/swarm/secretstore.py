"""Secret values: versioned docker secrets owned by bidsflux, and the root-only values file (its only
writer, under a lock) with the files that mirror its values.

Docker secrets are immutable, so every value lives in its own object named
<stack>_<logical>_v<N> and labelled as ours; the highest version present is the current one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bidsflux.diagnostics import UserError, clip

LABEL_MANAGED = "io.bidsflux.managed"
LABEL_STACK = "io.bidsflux.stack"
LABEL_SECRET = "io.bidsflux.secret"
LABEL_VERSION = "io.bidsflux.version"


def docker_client():  # type: ignore[no-untyped-def]
    """docker-py client from the environment; an unreachable engine is a UserError with the fix."""
    import docker
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    from bidsflux.console import connect_timeout

    timeout = connect_timeout()
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (DockerException, RequestException) as exc:
        raise UserError(
            f"cannot reach the Docker engine at {where} (waited up to {timeout:g}s for an answer: "
            f"{clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 200)}); start it "
            "(systemctl start docker, or dockerd), set DOCKER_HOST, or wait longer with --connect-timeout"
        ) from None
    logging.getLogger("bidsflux").info("Docker engine at %s answered (timeout %gs)", where, timeout)
    return client


def live_versions(stack: str) -> dict[str, int]:
    """Highest version of each logical secret of `stack` present in the swarm."""
    from docker.errors import APIError

    client = docker_client()
    try:
        secrets = client.secrets.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={stack}"]})
    except APIError as exc:
        raise UserError(f"cannot list swarm secrets: {exc.explanation or exc}; is this node a swarm manager?") from None
    versions: dict[str, int] = {}
    for s in secrets:
        labels = s.attrs.get("Spec", {}).get("Labels", {}) or {}
        try:
            logical, version = labels[LABEL_SECRET], int(labels[LABEL_VERSION])
        except (KeyError, ValueError):
            continue
        versions[logical] = max(version, versions.get(logical, 0))
    return versions


# ---------------------------------------------------------------- values, the values file, lifecycle

_ALNUM_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def generate_value(kind: str) -> str:
    """A fresh value for a secret of `kind` (x-bidsflux-secrets.<name>.generate)."""
    import secrets

    if kind == "password":
        return secrets.token_urlsafe(24)
    if kind == "username":
        return "admin" + secrets.token_hex(4)
    if kind == "access_key":
        return "".join(secrets.choice(_ALNUM_UPPER) for _ in range(20))
    if kind == "secret_key":
        return secrets.token_urlsafe(30)
    if kind == "placeholder":
        # Replaced by a GitLab-issued token later; random so that it can never be guessed either.
        return "placeholder-" + secrets.token_urlsafe(24)
    if kind == "runner_config":
        # A runner with no registration yet; `listen_address` serves /metrics for the healthcheck.
        return (
            "# gitlab-runner config.toml written by bidsflux; runners are added on registration\n"
            f"# instance {secrets.token_hex(8)}\n"
            "concurrent = 4\n"
            "check_interval = 0\n"
            'listen_address = "127.0.0.1:9252"\n'
        )
    if kind == "tls_ca_bundle":
        # Certificates are made by the proxy domain (it keeps the CA key); bootstrap runs it first.
        raise UserError("the tls_ca_bundle secret is written by `bidsflux tls apply`, not generated; run it "
                        "(bootstrap does) or `bidsflux tls rotate --ca` to replace the CA")
    raise UserError(f"unknown secret kind '{kind}' in x-bidsflux-secrets (use password, username, access_key, "
                    "secret_key, placeholder or runner_config)")


def secret_labels(stack: str, logical: str, version: int) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_STACK: stack, LABEL_SECRET: logical, LABEL_VERSION: str(version)}


def read_values_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Entries of the root-only values file (`NAME='value'` lines, shell syntax)."""
    import shlex

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror}; run as root") from None
    out = {}
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as exc:
        raise UserError(f"{p} is not in NAME='value' form ({exc}); restore it from its backup") from None
    for token in tokens:
        if "=" in token:
            k, v = token.split("=", 1)
            out[k] = v
    return out


@contextlib.contextmanager
def values_lock(path: str | os.PathLike[str], timeout: float = 60.0) -> Iterator[None]:
    """Exclusive lock for the values file (flock on `<file>.lock`, held across read-modify-write):
    the file itself is replaced by rename, so it cannot carry the lock."""
    import fcntl
    import time

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{p}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{p}.lock is held by another bidsflux run for more than {timeout:g}s; "
                                    "nothing was written, retry when it has finished") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _write_locked(p: Path, values: dict[str, str]) -> None:
    import shlex
    import tempfile

    text = "# bidsflux secret values (current versions). Root only; never commit or paste.\n" + "".join(
        f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items()))
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".secrets-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_values_file(path: str | os.PathLike[str], updates: dict[str, str]) -> None:
    """Merge `updates` into the values file, atomically, under its lock, readable by root only (0600),
    then rewrite the files that mirror a changed value (see `add_mirror`).

    Written before the docker secret exists, so a value is never lost when a run is killed."""
    p = Path(path)
    with values_lock(p):
        values = {**read_values_file(p), **updates}
        _write_locked(p, values)
        sync_mirrors(p, values)


def ensure_values(path: str | os.PathLike[str], wanted: Mapping[str, Callable[[], str]]) -> dict[str, str]:
    """All values, with each missing key of `wanted` generated and stored first (one locked
    read-modify-write, so concurrent runs agree on one value and lose none)."""
    p = Path(path)
    with values_lock(p):
        values = read_values_file(p)
        missing = {k: make() for k, make in wanted.items() if k not in values}
        if missing:
            values.update(missing)
            _write_locked(p, values)
            sync_mirrors(p, values)
        return values


# ------------------------------------------------------------- files that mirror a value (module secrets)


def _mirrors_path(p: Path) -> Path:
    return p.with_name(p.name + ".mirrors.json")


def add_mirror(path: str | os.PathLike[str], file: str | os.PathLike[str], key: str, owner: tuple[int, int],
               mode: int = 0o400) -> bool:
    """Keep `file` equal to the value of `key` from now on (rewritten atomically whenever the value
    changes, by whoever writes it); writes it now. False when the value does not exist yet."""
    import json

    p = Path(path)
    with values_lock(p):
        mp = _mirrors_path(p)
        mirrors = json.loads(mp.read_text(encoding="utf-8")) if mp.exists() else {}
        entry = {"key": key, "uid": owner[0], "gid": owner[1], "mode": mode}
        if mirrors.get(str(file)) != entry:
            mirrors[str(file)] = entry
            fd = os.open(f"{mp}.tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(mirrors, fh, indent=1, sort_keys=True)
            os.replace(f"{mp}.tmp", mp)
        values = read_values_file(p)
        sync_mirrors(p, values)
        return key in values


def sync_mirrors(p: Path, values: Mapping[str, str]) -> list[str]:
    """Rewrite each mirror file whose content differs from its value (call under the lock).
    Temporary file, fsync, rename: a module container started at any moment mounts the old or
    the new file, never a partial one."""
    import json

    mp = _mirrors_path(p)
    if not mp.exists():
        return []
    changed = []
    for file, entry in json.loads(mp.read_text(encoding="utf-8")).items():
        value = values.get(entry["key"])
        target = Path(file)
        if value is None or not target.parent.is_dir():
            continue
        try:
            st = target.stat()
            same_owner = os.geteuid() != 0 or (st.st_uid, st.st_gid) == (int(entry["uid"]), int(entry["gid"]))
            if same_owner and st.st_mode & 0o7777 == int(entry["mode"]) and target.read_text(encoding="utf-8") == value:
                continue
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(value)
                fh.flush()
                os.fsync(fh.fileno())
            if os.geteuid() == 0:
                os.chown(tmp, int(entry["uid"]), int(entry["gid"]))
            os.chmod(tmp, int(entry["mode"]))
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        changed.append(str(target))
    return changed


def create_secret(client, stack: str, logical: str, version: int, value: str,  # type: ignore[no-untyped-def]
                  extra_labels: dict[str, str] | None = None) -> str:
    """Create <stack>_<logical>_v<version>; an existing one with our labels is kept (re-runs)."""
    from docker.errors import APIError

    from bidsflux.site.render import versioned_secret_name

    name = versioned_secret_name(stack, logical, version)
    try:
        labels = {**secret_labels(stack, logical, version), **(extra_labels or {})}
        secret = client.secrets.create(name=name, data=value.encode("utf-8"), labels=labels)
    except APIError as exc:
        if exc.status_code == 409:
            return client.secrets.get(name).id
        raise UserError(f"cannot create swarm secret {name}: {exc.explanation or exc}") from None
    return secret.id


@dataclass
class SecretVersion:
    name: str
    id: str
    logical: str
    version: int
    created: str
    used_by: list[str]


def our_secrets(client, stack: str, include_previous: bool = True) -> list[SecretVersion]:  # type: ignore[no-untyped-def]
    """Every version of every secret of `stack` carrying our labels, with the services using it:
    their current spec, and (include_previous) the previous spec a rollback would return to."""
    api = client.api
    users: dict[str, set[str]] = {}
    for svc in api.services():
        for spec_key in ("Spec", "PreviousSpec") if include_previous else ("Spec",):
            spec = svc.get(spec_key) or {}
            for ref in ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Secrets") or []:
                users.setdefault(ref.get("SecretID", ""), set()).add(svc["Spec"]["Name"])
    out = []
    for s in api.secrets(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={stack}"]}):
        labels = s["Spec"].get("Labels") or {}
        try:
            version = int(labels.get(LABEL_VERSION, ""))
        except ValueError:
            continue
        if LABEL_SECRET not in labels:
            continue
        out.append(SecretVersion(s["Spec"]["Name"], s["ID"], labels[LABEL_SECRET], version, s.get("CreatedAt", ""),
                                 sorted(users.get(s["ID"], set()))))
    return sorted(out, key=lambda v: (v.logical, v.version))


def gc_candidates(versions: list[SecretVersion]) -> list[SecretVersion]:
    """Old versions nothing uses; the newest version of each secret always stays."""
    newest: dict[str, int] = {}
    for v in versions:
        newest[v.logical] = max(newest.get(v.logical, 0), v.version)
    return [v for v in versions if v.version < newest[v.logical] and not v.used_by]


def known_secret_values(site: dict | None, env: dict[str, str] | None = None) -> list[str]:  # type: ignore[type-arg]
    """Every secret value this process can know (the values file when readable here, and the
    environment's secret variables): what output, plans, notes and issues are scrubbed of."""
    from bidsflux.redact import known_values

    env = dict(os.environ if env is None else env)
    stored: list[str] = []
    path = ((site or {}).get("secrets") or {}).get("file")
    if path:
        try:
            stored = list(read_values_file(path).values())
        except (OSError, ValueError):
            stored = []  # not on this host or not readable by this user: the environment still counts
    return known_values(env, stored)


def require_values_folder(path: str | os.PathLike[str]) -> None:
    """In a CI job the values file must be the host's, mounted by the runner: a folder that does
    not exist means the job would write into its own container, and the value would be lost."""
    if os.environ.get("GITLAB_CI") != "true":
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise UserError(f"the values file's folder {folder} is not mounted into this job: new values would vanish "
                        "with the job container. Run the job on the runner with `mounts: [state]` in "
                        "stack/runners.yml (tag bidsflux-deploy); nothing was changed")
