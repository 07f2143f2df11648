"""Health checks for a running site: each check says ok, warn or fail, why, and what fixes it.

Checks live in a registry (`@check(name, timeout)`), run concurrently in daemon threads and are
each given a deadline: a check still running at its deadline is reported as failed and simply
abandoned, so an endpoint that accepts connections and never answers cannot stall the run (a
daemon thread does not keep the interpreter alive, unlike a ThreadPoolExecutor worker).

Where things are reached (endpoints) and the credentials used:
- endpoints derive from stack/site.yml (hosts.*, ports.*, paths.*) and can be overridden per
  name with `--endpoint NAME=VALUE` or the environment variable BIDSFLUX_ENDPOINT_<NAME>
  (names: gitlab, registry, s3, dicom, mercure_web, mercure_config);
- secrets cannot be read back from docker, so values come from, first to last: the environment
  variable BIDSFLUX_SECRET_<LOGICAL> (e.g. BIDSFLUX_SECRET_S3_ID), the CI variables the site's
  pipelines already carry (S3_ID, S3_SECRET), then the site's secrets file (`secrets.file`,
  `name='value'` lines as bootstrap writes them, names as in the stack's x-bidsflux-secrets). Values never appear in any
  output: every reason, fix and detail is scrubbed of every known secret value.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bidsflux.diagnostics import UserError

# ---------------------------------------------------------------------------------------------
# results


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warn": 1, "fail": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    status: Status
    reason: str
    fix: str = ""


@dataclass
class Result:
    """The outcome of one check: the worst of its findings, with every problem in `details`."""

    name: str
    status: Status
    reason: str
    fix: str
    elapsed: float
    timeout: float
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["elapsed"] = round(self.elapsed, 3)
        return data


class Report:
    """What a check fills in while it runs; `step` says what it is waiting for right now, so a
    timeout can name it."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.step = "starting"

    def ok(self, reason: str) -> None:
        self.findings.append(Finding(Status.OK, reason))

    def warn(self, reason: str, fix: str) -> None:
        self.findings.append(Finding(Status.WARN, reason, fix))

    def fail(self, reason: str, fix: str) -> None:
        self.findings.append(Finding(Status.FAIL, reason, fix))

    def summarize(self, name: str, elapsed: float, timeout: float) -> Result:
        if not self.findings:
            return Result(name, Status.WARN, "the check found nothing to look at", "", elapsed, timeout)
        worst = max(f.status.rank for f in self.findings)
        top = [f for f in self.findings if f.status.rank == worst]
        if worst == 0:
            reason = "; ".join(f.reason for f in top)
            return Result(name, Status.OK, reason, "", elapsed, timeout, [f.reason for f in top])
        reason = top[0].reason + (f" (and {len(top) - 1} more)" if len(top) > 1 else "")
        problems = [f for f in self.findings if f.status != Status.OK]
        details = [f"{f.status.value}: {f.reason}" + (f" -> {f.fix}" if f.fix else "") for f in problems]
        return Result(name, top[0].status, reason, top[0].fix, elapsed, timeout, details)


# ---------------------------------------------------------------------------------------------
# where things are and how to authenticate

ENDPOINT_NAMES = ("gitlab", "registry", "s3", "dicom", "mercure_web", "mercure_config")
# CI variables the site's own pipelines carry (stack/gitlab.yml) for some secrets.
SECRET_ENV_ALIASES = {"s3_id": ("S3_ID",), "s3_secret": ("S3_SECRET",)}


def _url(scheme: str, host: str, port: int, default_port: int) -> str:
    return f"{scheme}://{host}" + ("" if port == default_port else f":{port}")


def default_endpoints(site: Mapping[str, Any]) -> dict[str, str]:
    hosts, ports = site["hosts"], site["ports"]
    return {
        # GitLab's external_url in the stack template is plain http on ports.http.
        "gitlab": _url("http", hosts["gitlab"], ports["http"], 80),
        "registry": f"http://{hosts['registry']}:{ports['registry']}",
        "s3": f"http://{hosts['s3']}:{ports['s3_api']}",
        "dicom": f"{hosts['dicom']}:{ports['dicom']}",
        "mercure_web": f"http://{hosts['dicom']}:{ports['mercure_web']}",
        "mercure_config": str(Path(site["paths"]["mercure_base"]["path"]) / "config" / "mercure.json"),
    }


class Secrets:
    """Secret values by logical name, from the environment or the site's secrets file."""

    def __init__(self, file: Path | None, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.file_problem = ""
        self._file_values: dict[str, str] | None = None
        self.alias_names: set[str] = set()
        self._lock = threading.Lock()  # checks read secrets from their own threads

    def _from_file(self) -> dict[str, str]:
        with self._lock:
            return self._read_file()

    def _read_file(self) -> dict[str, str]:
        if self._file_values is None:
            self._file_values = {}
            if self.file is not None:
                from bidsflux.swarm.secretstore import read_values_file

                try:
                    if not self.file.exists():
                        raise FileNotFoundError(self.file)
                    # The file bootstrap writes: `name='value'` lines in shell syntax.
                    self._file_values = {k.lower(): v for k, v in read_values_file(self.file).items()}
                except FileNotFoundError:
                    self.file_problem = f"{self.file} does not exist on this host"
                except PermissionError:
                    self.file_problem = f"{self.file} is not readable by this user (it is root-only)"
                except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: broken shell quoting
                    self.file_problem = f"cannot read {self.file}: {exc.__class__.__name__}"
        return self._file_values

    def get(self, logical: str, aliases: Iterable[str] = ()) -> str | None:
        """`aliases` are further variables holding it (a CI variable named in gitlab.yml)."""
        for var in (f"BIDSFLUX_SECRET_{logical.upper()}", *aliases, *SECRET_ENV_ALIASES.get(logical, ())):
            if self.env.get(var):
                with self._lock:
                    self.alias_names.add(var)
                return self.env[var]
        return self._from_file().get(logical.lower()) or None

    def how_to_provide(self, logical: str, aliases: Iterable[str] = ()) -> str:
        where = f"add `{logical}=...` to {self.file}" if self.file else "set secrets.file in site.yml"
        note = f" ({self.file_problem})" if self.file_problem else ""
        names = " or ".join([f"BIDSFLUX_SECRET_{logical.upper()}", *aliases])
        return f"set {names}, or {where}{note}"

    def known_values(self) -> list[str]:
        values = [v for k, v in self.env.items() if k.startswith("BIDSFLUX_SECRET_") and v]
        with self._lock:
            values += [self.env[a] for a in self.alias_names if self.env.get(a)]
        values += [self.env[a] for aliases in SECRET_ENV_ALIASES.values() for a in aliases if self.env.get(a)]
        values += [v for v in self._from_file().values() if v]
        # Short values would scrub ordinary words; secrets generated here are long.
        return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


@dataclass
class Context:
    """Everything a check reads: the site, the repository's other files, endpoints, secrets."""

    site: dict[str, Any]
    endpoints: dict[str, str]
    secrets: Secrets
    gitlab_doc: dict[str, Any] = field(default_factory=dict)
    runners_doc: dict[str, Any] = field(default_factory=dict)
    ci_doc: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None  # overrides every check's own timeout when set
    # Runners must have contacted GitLab this recently (they poll every few seconds).
    runner_contact_window: float = 15 * 60
    restart_window: float = 10 * 60
    restart_threshold: int = 3

    def io_timeout(self, check_timeout: float) -> float:
        """Network timeout inside a check: below its deadline, so the check itself can say what hung."""
        return max(0.5, min(5.0, check_timeout * 0.8))


# ---------------------------------------------------------------------------------------------
# registry and runner

CheckFunc = Callable[[Context, Report, float], None]


@dataclass(frozen=True)
class Check:
    name: str
    func: CheckFunc
    timeout: float
    summary: str


REGISTRY: dict[str, Check] = {}


def check(name: str, timeout: float, summary: str) -> Callable[[CheckFunc], CheckFunc]:
    def register(func: CheckFunc) -> CheckFunc:
        REGISTRY[name] = Check(name, func, timeout, summary)
        return func

    return register


def select(names: Iterable[str]) -> list[Check]:
    names = list(names)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UserError(f"unknown check(s): {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in names] if names else list(REGISTRY.values())


def _scrub(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:300]}" if text else exc.__class__.__name__


def run_checks(checks: list[Check], ctx: Context,
               on_wait: Callable[[list[str], float], None] | None = None) -> list[Result]:
    """Run `checks` concurrently; each ends by its own deadline whatever its thread does."""
    start = time.monotonic()
    done: dict[str, Result] = {}
    reports = {c.name: Report() for c in checks}
    limits = {c.name: ctx.timeout if ctx.timeout is not None else c.timeout for c in checks}
    lock = threading.Lock()

    def body(c: Check) -> None:
        report = reports[c.name]
        began = time.monotonic()
        try:
            c.func(ctx, report, limits[c.name])
        except UserError as exc:
            report.fail(str(exc).splitlines()[0], "see the message")
        except Exception as exc:  # noqa: BLE001 - a broken check must still yield a result
            report.fail(f"the check itself failed: {_first_line(exc)}", "report this as a bidsflux bug")
        result = report.summarize(c.name, time.monotonic() - began, limits[c.name])
        with lock:
            done.setdefault(c.name, result)

    for c in checks:
        threading.Thread(target=body, args=(c,), name=f"health-{c.name}", daemon=True).start()

    while True:
        now = time.monotonic()
        with lock:
            for c in checks:
                if c.name not in done and now - start >= limits[c.name]:
                    done[c.name] = Result(
                        c.name, Status.FAIL,
                        f"no result within {limits[c.name]:g}s (was waiting for: {reports[c.name].step})",
                        "that endpoint accepts connections but does not answer: check the service "
                        "and the network path, or raise --timeout",
                        limits[c.name], limits[c.name],
                    )
            pending = [c.name for c in checks if c.name not in done]
        if not pending:
            break
        if on_wait is not None:
            on_wait(pending, now - start)
        time.sleep(0.05)

    secrets = ctx.secrets.known_values()
    results = [done[c.name] for c in checks]
    for r in results:
        r.reason = _scrub(r.reason, secrets)
        r.fix = _scrub(r.fix, secrets)
        r.details = [_scrub(d, secrets) for d in r.details]
    return results


def overall(results: Iterable[Result]) -> Status:
    worst = max((r.status.rank for r in results), default=0)
    return [Status.OK, Status.WARN, Status.FAIL][worst]


# ---------------------------------------------------------------------------------------------
# loading


def load_context(site_path: str | None, root: str | None, endpoint_overrides: Mapping[str, str],
                 secrets_file: str | None, timeout: float | None, env: Mapping[str, str] | None = None) -> Context:
    from bidsflux.site import schemas
    from bidsflux.site.repository import open_repository
    from bidsflux.site.yamlsource import load

    env = dict(os.environ if env is None else env)
    repo = open_repository(site_path, root)
    site_doc = load(repo.site_file, repo.root)
    problems = schemas.check_document(site_doc, repo.schema_dir / "site.schema.json")
    if problems:
        raise UserError(f"{repo.shown(repo.site_file)} is not valid; run `bidsflux validate`", problems)
    site = site_doc.data

    def optional(path: Path) -> dict[str, Any]:
        if not path.exists():
            return {}
        data = load(path, repo.root).data
        return data if isinstance(data, dict) else {}

    endpoints = default_endpoints(site)
    for name in ENDPOINT_NAMES:
        if env.get(f"BIDSFLUX_ENDPOINT_{name.upper()}"):
            endpoints[name] = env[f"BIDSFLUX_ENDPOINT_{name.upper()}"]
    for name, value in endpoint_overrides.items():
        if name not in ENDPOINT_NAMES:
            raise UserError(f"unknown endpoint '{name}'; choose from {', '.join(ENDPOINT_NAMES)}")
        endpoints[name] = value
    file = Path(secrets_file) if secrets_file else Path(site["secrets"]["file"])
    return Context(
        site=site, endpoints=endpoints, secrets=Secrets(file, env),
        gitlab_doc=optional(repo.gitlab_file), runners_doc=optional(repo.runners_file),
        ci_doc=load_ci(repo.root), timeout=timeout,
        # Optional in site.yml: sites with slow polling or flaky services tune these.
        runner_contact_window=60.0 * site["health"].get("runner_contact_minutes", 15),
        restart_window=60.0 * site["health"].get("restart_window_minutes", 10),
        restart_threshold=int(site["health"].get("restart_threshold", 3)),
    )


# ---------------------------------------------------------------------------------------------
# helpers shared by checks


def _http_get(url: str, timeout: float, **kwargs: Any) -> Any:
    import requests

    return requests.get(url, timeout=timeout, allow_redirects=True, **kwargs)


def _http_problem(exc: Exception, url: str, timeout: float) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return f"{url} did not answer within {timeout:g}s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {url} (nothing listening, or DNS/firewall)"
    return f"{url}: {_first_line(exc)}"


def _gitlab(ctx: Context, token: str | None, timeout: float) -> Any:
    import gitlab

    return gitlab.Gitlab(ctx.endpoints["gitlab"], private_token=token, timeout=timeout, retry_transient_errors=False)


def _gitlab_error(exc: Exception, what: str, url: str, timeout: float) -> tuple[str, str]:
    import gitlab.exceptions as gle
    import requests

    if isinstance(exc, gle.GitlabAuthenticationError):
        return f"GitLab refused {what} (401: revoked, expired or wrong token)", "issue a new token (bidsflux gitlab tokens rotate) and store it"
    if isinstance(exc, gle.GitlabError):
        code = getattr(exc, "response_code", None)
        if code == 403:
            return f"{what} lacks permission (403)", "the token needs admin rights or the api/read_api scope"
        return f"GitLab answered {what} with {code}: {str(exc)[:200]}", "check GitLab's logs (gitlab-ctl tail)"
    if isinstance(exc, requests.RequestException):
        return _http_problem(exc, url, timeout), "is GitLab running and reachable from here?"
    return f"{what}: {_first_line(exc)}", "check GitLab"


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class BotToken:
    key: str  # the user's key in gitlab.yml
    username: str
    logical: str  # secret name in the secrets file
    aliases: tuple[str, ...]  # CI variables that carry it in the site's pipelines
    admin: bool


def bot_tokens(ctx: Context) -> list[BotToken]:
    """The bot tokens gitlab.yml issues (a user key that is a site.yml `bots` key takes its user
    name from there); without gitlab.yml users, the site's two bots."""
    bots = {k: v for k, v in ctx.site["bots"].items() if k != "email_domain"}
    users = ctx.gitlab_doc.get("users") if isinstance(ctx.gitlab_doc.get("users"), dict) else {}
    out = []
    for key, spec in (users or {k: {} for k in bots}).items():
        spec = spec if isinstance(spec, dict) else {}
        token = spec.get("token") if isinstance(spec.get("token"), dict) else {}
        if users and not token:
            continue
        variable = token.get("variable")
        out.append(BotToken(key, str(bots.get(key, key)), str(token.get("secret") or f"{key}_gitlab_token"),
                            (str(variable),) if variable else (), bool(spec.get("admin"))))
    return out


def admin_token(ctx: Context) -> tuple[str | None, str]:
    """An admin token (the automation bot's, else `gitlab_admin_token`) and how to provide one."""
    for bot in bot_tokens(ctx):
        if bot.admin:
            value = ctx.secrets.get(bot.logical, bot.aliases)
            if value:
                return value, ""
    value = ctx.secrets.get("gitlab_admin_token")
    if value:
        return value, ""
    admins = [b for b in bot_tokens(ctx) if b.admin]
    how = ctx.secrets.how_to_provide(admins[0].logical, admins[0].aliases) if admins else ctx.secrets.how_to_provide("gitlab_admin_token")
    return None, how


# ---------------------------------------------------------------------------------------------
# swarm

NON_SWARM_SERVICES = {"mercure"}


def expected_swarm_services(site: Mapping[str, Any]) -> dict[str, str]:
    """Stack service -> the role that places it, as site.yml describes."""
    out: dict[str, str] = {}
    for role, services in site["roles"].items():
        for svc in services or []:
            if svc in NON_SWARM_SERVICES:
                continue
            if svc == "dicom_endpoint" and site["dicom_endpoint"]["kind"] != "storescp":
                continue
            out.setdefault(svc, role)
    return out


def _task_error(task: Mapping[str, Any]) -> str:
    status = task.get("Status") or {}
    err = status.get("Err") or ""
    msg = status.get("Message") or ""
    return err or f"{status.get('State', '?')}: {msg}"


@check("swarm", timeout=20, summary="nodes ready and labelled, services at desired replicas, no restart loops, overlay network")
def check_swarm(ctx: Context, report: Report, timeout: float) -> None:
    from docker.errors import APIError

    from bidsflux.site.render import role_label
    from bidsflux.swarm.secretstore import docker_client

    stack = ctx.site["site"]["name"]
    report.step = "the Docker engine"
    client = docker_client()
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        report.fail("this Docker engine is not part of a swarm", "run `bidsflux bootstrap` (or docker swarm init) on the data server")
        return
    if not swarm.get("ControlAvailable"):
        report.fail("this node is not a swarm manager, so it cannot see services", "run `bidsflux health` on a manager node")
        return

    report.step = "docker node ls"
    nodes = client.nodes.list()
    ready_labels: list[dict[str, str]] = []
    for node in nodes:
        spec, state = node.attrs.get("Spec") or {}, node.attrs.get("Status") or {}
        host = (node.attrs.get("Description") or {}).get("Hostname", node.id[:12])
        if state.get("State") != "ready":
            report.fail(f"node {host} is {state.get('State')}" + (f": {state['Message']}" if state.get("Message") else ""),
                        f"bring node {host} back (docker node ls, journalctl -u docker on it)")
            continue
        if spec.get("Availability") != "active":
            report.warn(f"node {host} is {spec.get('Availability')}", f"docker node update --availability active {host}")
            continue
        ready_labels.append(spec.get("Labels") or {})
    for role, services in ctx.site["roles"].items():
        label = role_label(role)
        if services and not any(labels.get(label) == "true" for labels in ready_labels):
            report.fail(f"no ready node carries {label}=true (needed by {', '.join(services)})",
                        f"docker node update --label-add {label}=true <node>")
    if ready_labels:
        report.ok(f"{len(ready_labels)} node(s) ready")

    report.step = "docker service ls"
    services = {s.name: s for s in client.services.list(filters={"label": f"com.docker.stack.namespace={stack}"})}
    now = _now()
    for svc, _role in sorted(expected_swarm_services(ctx.site).items()):
        full = f"{stack}_{svc}"
        if full not in services:
            report.fail(f"service {full} is not deployed", "bidsflux deploy")
    for full, service in sorted(services.items()):
        report.step = f"docker service ps {full}"
        try:
            tasks = service.tasks()
        except APIError as exc:
            report.fail(f"cannot list tasks of {full}: {exc.explanation or exc}", "check the Docker engine")
            continue
        mode = (service.attrs.get("Spec") or {}).get("Mode") or {}
        running = [t for t in tasks if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") == "running"]
        if "Replicated" in mode:
            desired = int(mode["Replicated"].get("Replicas", 1))
        else:  # global: one per eligible node, i.e. every task the orchestrator wants running
            desired = len({t.get("NodeID") for t in tasks if t.get("DesiredState") == "running"})
        recent = [t for t in tasks if (c := _parse_time(t.get("CreatedAt"))) and (now - c).total_seconds() <= ctx.restart_window]
        # Tasks that ended on their own; `shutdown` is what a rolling update leaves, not a restart.
        ended = [t for t in recent if (t.get("Status") or {}).get("State") in {"failed", "rejected", "complete"}
                 and t.get("DesiredState") != "running"]
        failed = sorted((t for t in tasks if (t.get("Status") or {}).get("State") in {"failed", "rejected"}),
                        key=lambda t: (t.get("Status") or {}).get("Timestamp", ""), reverse=True)
        if desired == 0 and full.removeprefix(f"{stack}_") in expected_swarm_services(ctx.site):
            # Scaled to zero by hand: the site needs it, so it is down, not "at its desired count".
            report.fail(f"{full}: stopped (scaled to 0 replicas)", f"bidsflux deploy (or docker service scale {full}=1)")
        elif len(running) < desired:
            why = f"; last task error: {_task_error(failed[0])}" if failed else ""
            if not failed:
                pending = [t for t in tasks if t.get("DesiredState") == "running" and (t.get("Status") or {}).get("State") != "running"]
                if pending:
                    why = f"; task {(pending[0].get('Status') or {}).get('State')}: {_task_error(pending[0])}"
            report.fail(f"{full}: {len(running)}/{desired} replicas running{why}",
                        f"docker service ps --no-trunc {full}; fix the cause, then bidsflux deploy")
        elif len(ended) >= ctx.restart_threshold:
            # Up right now, but a loop: it will be down again in a moment.
            why = f" (last: {_task_error(failed[0])})" if failed else ""
            report.fail(f"{full}: {len(running)}/{desired} running but {len(ended)} task restarts within "
                        f"{ctx.restart_window / 60:g} min{why}", f"docker service logs {full}: the service keeps restarting")
        else:
            report.ok(f"{full}: {len(running)}/{desired}")

    net_name = ctx.site["swarm"]["network"]["name"]
    report.step = f"docker network inspect {net_name}"
    nets = [n for n in client.networks.list(names=[net_name]) if n.name == net_name]
    if not nets:
        report.fail(f"overlay network {net_name} does not exist",
                    f"docker network create --driver overlay --attachable --subnet {ctx.site['swarm']['network']['subnet']} {net_name}")
    elif nets[0].attrs.get("Driver") != "overlay":
        report.fail(f"network {net_name} uses driver {nets[0].attrs.get('Driver')}, not overlay",
                    f"remove it and recreate it as an attachable overlay network ({net_name})")
    else:
        report.ok(f"overlay network {net_name} present")


# ---------------------------------------------------------------------------------------------
# GitLab


@check("gitlab", timeout=15, summary="readiness (/-/readiness?all=1), container registry /v2/, API with the bot token")
def check_gitlab(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    base = ctx.endpoints["gitlab"].rstrip("/")
    allow = ", ".join(ctx.site["health"]["monitoring_allowlist"])

    url = f"{base}/-/readiness?all=1"
    report.step = f"GET {url}"
    try:
        resp = _http_get(url, io)
        if resp.status_code == 404:
            report.fail("GitLab hides /-/readiness from this address (404)",
                        f"run health from an address in health.monitoring_allowlist ({allow}) or add this one")
        else:
            try:
                body = resp.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                report.fail(f"{url} answered {resp.status_code} without GitLab's JSON", "is this URL GitLab? check hosts.gitlab / ports.http")
            elif body.get("status") == "ok" and resp.status_code == 200:
                report.ok("GitLab is ready")
            else:
                bad = sorted(k for k, v in body.items() if isinstance(v, list) and any(
                    isinstance(i, dict) and i.get("status") != "ok" for i in v))
                report.fail(f"GitLab is not ready ({resp.status_code}): failing {', '.join(bad) or body.get('status')}",
                            "gitlab-ctl status inside the GitLab container; a fresh GitLab needs minutes to start")
    except Exception as exc:  # noqa: BLE001 - every network error is a finding
        report.fail(_http_problem(exc, url, io), "is the GitLab service running? (bidsflux health --check swarm)")

    reg = f"{ctx.endpoints['registry'].rstrip('/')}/v2/"
    report.step = f"GET {reg}"
    try:
        resp = _http_get(reg, io)
        api = resp.headers.get("Docker-Distribution-Api-Version", "")
        if resp.status_code in (200, 401) and api.startswith("registry/2"):
            report.ok("container registry answers /v2/")
        else:
            report.fail(f"{reg} answered {resp.status_code} without the registry API header",
                        "enable the registry (registry_external_url) and check ports.registry")
    except Exception as exc:  # noqa: BLE001
        report.fail(_http_problem(exc, reg, io), "is the registry enabled and its port published?")

    entry = next((b for b in bot_tokens(ctx) if b.key == "dicom_bot"), None) or BotToken(
        "dicom_bot", ctx.site["bots"]["dicom_bot"], "dicom_bot_gitlab_token", (), False)
    bot, logical = entry.username, entry.logical
    token = ctx.secrets.get(logical, entry.aliases)
    if token is None:
        report.warn(f"no token for {bot} available here, API not checked", ctx.secrets.how_to_provide(logical, entry.aliases))
        return
    report.step = f"GET {base}/api/v4/user as {bot}"
    try:
        gl = _gitlab(ctx, token, io)
        gl.auth()
        user = gl.user
        name = getattr(user, "username", None)
        if name != bot:
            report.warn(f"the {logical} token belongs to {name}, not {bot}", f"store {bot}'s token as {logical}")
        else:
            report.ok(f"API answers as {bot}")
    except Exception as exc:  # noqa: BLE001
        reason, fix = _gitlab_error(exc, f"the {bot} token", base, io)
        report.fail(reason, fix)


# ---------------------------------------------------------------------------------------------
# runners

CI_GLOBAL_KEYS = {"stages", "variables", "default", "include", "workflow", "image", "services",
                  "cache", "before_script", "after_script", "types", "pages"}


def _inherited(ci: Mapping[str, Any], job: str, key: str, depth: int = 0) -> Any:
    """`key` of `job` following `extends` (a later parent wins, as in GitLab); None when unset."""
    spec = ci.get(job)
    if not isinstance(spec, dict) or depth > 10:
        return None
    if key in spec:
        return spec[key]
    parents = spec.get("extends") or []
    for parent in reversed([parents] if isinstance(parents, str) else list(parents)):
        found = _inherited(ci, str(parent), key, depth + 1)
        if found is not None:
            return found
    return None


def ci_job_tags(ci: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Tags of each runnable job (hidden `.jobs` are templates, not jobs), through `extends` and
    `default:`; `ci` is .gitlab-ci.yml merged over its local includes."""
    default = ci.get("default") if isinstance(ci.get("default"), dict) else {}
    out: dict[str, frozenset[str]] = {}
    for job, spec in ci.items():
        if job in CI_GLOBAL_KEYS or job.startswith(".") or not isinstance(spec, dict):
            continue
        if _inherited(ci, job, "script") is None and _inherited(ci, job, "trigger") is None:
            continue
        tags = _inherited(ci, job, "tags")
        if tags is None:
            tags = default.get("tags") or []
        out[job] = frozenset(t for t in tags if isinstance(t, str) and "$" not in t) if isinstance(tags, list) else frozenset()
    return out


def load_ci(root: Path) -> dict[str, Any]:
    """.gitlab-ci.yml merged over the files it includes with `local:` (what defines job templates)."""
    from bidsflux.site.yamlsource import load

    def read(path: Path) -> dict[str, Any]:
        if not path.is_file():
            return {}
        try:
            data = load(path, root).data
        except UserError:
            return {}  # `bidsflux validate` reports broken CI files
        return data if isinstance(data, dict) else {}

    main = read(root / ".gitlab-ci.yml")
    merged: dict[str, Any] = {}
    includes = main.get("include") or []
    for item in [includes] if isinstance(includes, (str, dict)) else includes:
        local = item if isinstance(item, str) else (item.get("local") if isinstance(item, dict) else None)
        if isinstance(local, str) and "://" not in local:
            merged.update(read(root / local.lstrip("/")))
    merged.update(main)
    return merged


@check("runners", timeout=15, summary="each runner of runners.yml online with recent contact; every CI job tag served")
def check_runners(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    fleet: dict[str, Any] = (ctx.runners_doc or {}).get("runners") or {}
    if not fleet:
        report.warn("stack/runners.yml lists no runner", "describe the runner fleet in stack/runners.yml")
        return
    token, how = admin_token(ctx)
    if token is None:
        report.fail("no admin token available to list runners", how)
        return
    base = ctx.endpoints["gitlab"].rstrip("/")
    report.step = f"GET {base}/api/v4/runners/all"
    try:
        gl = _gitlab(ctx, token, io)
        listed = gl.runners_all.list(get_all=True)
        details = []
        for r in listed:
            report.step = f"GET {base}/api/v4/runners/{r.id}"
            details.append(gl.runners.get(r.id))
    except Exception as exc:  # noqa: BLE001
        reason, fix = _gitlab_error(exc, "listing runners", base, io)
        report.fail(reason, fix)
        return

    now = _now()
    online: list[Any] = []
    for r in details:
        contacted = _parse_time(getattr(r, "contacted_at", None))
        if getattr(r, "status", None) == "online" and not getattr(r, "paused", False) and getattr(r, "active", True) is not False:
            online.append(r)
        r._bidsflux_contacted = contacted  # noqa: SLF001 - cache the parsed value on the object
    for key, spec in sorted(fleet.items()):
        matches = [r for r in details if getattr(r, "description", None) in (spec.get("description"), key)]
        if not matches:
            report.fail(f"runner {key} is not registered in GitLab", "bidsflux runners register")
            continue
        r = max(matches, key=lambda m: m._bidsflux_contacted or dt.datetime.min.replace(tzinfo=dt.UTC))
        contacted = r._bidsflux_contacted
        status = getattr(r, "status", "unknown")
        ago = f"last contact {int((now - contacted).total_seconds() // 60)} min ago" if contacted else "never contacted"
        if r not in online:
            state = "paused" if getattr(r, "paused", False) else status
            report.fail(f"runner {key} (#{r.id}) is {state}, {ago}",
                        f"docker service logs {ctx.site['site']['name']}_{spec.get('service')}; re-register with bidsflux runners register")
        elif contacted is None or (now - contacted).total_seconds() > ctx.runner_contact_window:
            report.warn(f"runner {key} (#{r.id}) is online but {ago}",
                        f"docker service logs {ctx.site['site']['name']}_{spec.get('service')}")
        else:
            report.ok(f"runner {key} online")
        # glrt- authentication tokens can expire too; an expired one takes the runner offline.
        expires = _parse_time(getattr(r, "token_expires_at", None))
        if expires is not None:
            health = ctx.site["health"]
            _grade(report, _days_left(expires), health["token_warn_days"], health["token_fail_days"],
                   f"runner {key}'s token", "bidsflux runners register (re-registers it with a new token)")

    offers = [(frozenset(getattr(r, "tag_list", []) or []), bool(getattr(r, "run_untagged", False))) for r in online]
    for job, tags in sorted(ci_job_tags(ctx.ci_doc).items()):
        if tags:
            served = any(tags <= offered for offered, _ in offers)
        else:
            served = any(untagged for _, untagged in offers)
        want = ", ".join(sorted(tags)) if tags else "untagged jobs"
        if not served:
            report.fail(f"CI job {job} needs {want}: no online runner serves it",
                        "bring the runner offering these tags online, or fix the job's tags")
    if offers:
        report.ok("every CI job's tags are served by an online runner")


# ---------------------------------------------------------------------------------------------
# S3

CONSOLE_REASON = "this looks like a console URL, not the S3 API"


def _looks_like_s3(headers: Mapping[str, str], body: bytes) -> bool:
    if any(k.lower().startswith("x-amz-") for k in headers):
        return True
    head = body.lstrip()[:200].lower()
    return head.startswith(b"<?xml") or head.startswith(b"<error") or b"<listallmybucketsresult" in head


def _looks_like_html(headers: Mapping[str, str], body: bytes) -> bool:
    head = body.lstrip()[:200].lower()
    return "text/html" in headers.get("Content-Type", "").lower() or head.startswith((b"<!doctype html", b"<html"))


def health_bucket(site: Mapping[str, Any]) -> str:
    return f"{site['site']['name'].replace('_', '-')}-health"


@check("s3", timeout=20, summary="canary put/get/compare/delete on the S3 API with the indexer's keys")
def check_s3(ctx: Context, report: Report, timeout: float) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    io = ctx.io_timeout(timeout)
    endpoint = ctx.endpoints["s3"].rstrip("/")
    report.step = f"GET {endpoint}/"
    try:
        probe = _http_get(endpoint + "/", io)
    except Exception as exc:  # noqa: BLE001
        report.fail(_http_problem(exc, endpoint, io), "is MinIO running and ports.s3_api published? (bidsflux health --check swarm)")
        return
    if _looks_like_html(probe.headers, probe.content) or not _looks_like_s3(probe.headers, probe.content):
        report.fail(f"{endpoint}: {CONSOLE_REASON} (answered {probe.status_code} "
                    f"{probe.headers.get('Content-Type', 'without a content type')}, no S3 headers)",
                    "point hosts.s3/ports.s3_api (and indexer.storage_remote) at the S3 API port (9000), not the console (9090)")
        return

    key_id, secret = ctx.secrets.get("s3_id"), ctx.secrets.get("s3_secret")
    if not key_id or not secret:
        missing = "s3_id" if not key_id else "s3_secret"
        report.fail("the indexer's S3 keys are not available here", ctx.secrets.how_to_provide(missing))
        return
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1",
        config=Config(signature_version="s3v4", connect_timeout=io, read_timeout=io, retries={"max_attempts": 1},
                      s3={"addressing_style": "path"},
                      # Newer botocore adds CRC trailers some S3 servers reject; checksums are ours.
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )
    bucket = health_bucket(ctx.site)
    key = f"canary/{uuid.uuid4().hex}"
    payload = f"bidsflux health canary {uuid.uuid4()}\n".encode() * 64
    md5 = hashlib.md5(payload, usedforsecurity=False)
    step = f"reach bucket {bucket}"
    try:
        report.step = f"HEAD s3://{bucket}"
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            step = f"create bucket {bucket}"
            report.step = f"create s3://{bucket}"
            client.create_bucket(Bucket=bucket)
        step = "put the canary"
        report.step = f"PUT s3://{bucket}/{key}"
        put = client.put_object(Bucket=bucket, Key=key, Body=payload, ContentMD5=base64.b64encode(md5.digest()).decode())
        headers = put.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if not any(h.lower().startswith("x-amz-") for h in headers) and "etag" not in {h.lower() for h in headers}:
            report.fail(f"{endpoint}: {CONSOLE_REASON} (the upload was answered without S3 headers)",
                        "point hosts.s3/ports.s3_api at the S3 API port, not the console")
            return
        step = "read the canary back"
        report.step = f"GET s3://{bucket}/{key}"
        got = client.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        etag = str(got.get("ETag", "")).strip('"')
        step = "delete the canary"
        report.step = f"DELETE s3://{bucket}/{key}"
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            report.fail(f"S3 refused to {step}: {code} (wrong or unauthorised indexer keys)",
                        "make the indexer's keys (s3_id/s3_secret) exist in MinIO with read/write rights (bidsflux s3 sync-users)")
        else:
            report.fail(f"S3 failed to {step}: {code} {err.get('Message', '')}".strip(), "check MinIO's logs (docker service logs)")
        return
    except BotoCoreError as exc:
        report.fail(f"S3 failed to {step}: {_first_line(exc)}", "is the S3 API reachable from here?")
        return
    if hashlib.sha256(body).hexdigest() != hashlib.sha256(payload).hexdigest():
        report.fail(f"the canary read back differs from what was written ({len(body)} of {len(payload)} bytes)",
                    "S3 is not storing data faithfully: check MinIO's disks and logs")
        return
    if etag and "-" not in etag and etag != md5.hexdigest():
        report.fail("the canary's ETag does not match its MD5", "S3 is not storing data faithfully: check MinIO")
        return
    report.ok(f"canary round trip on {endpoint} (bucket {bucket}) matched")


# ---------------------------------------------------------------------------------------------
# DICOM

MERCURE_REQUIRED_KEYS = (
    "appliance_name", "port", "incoming_folder", "studies_folder", "outgoing_folder", "success_folder",
    "error_folder", "discard_folder", "processing_folder", "jobs_folder", "bookkeeper",
    "router_scan_interval", "dispatcher_scan_interval", "cleaner_scan_interval", "retention", "retry_delay",
    "retry_max", "series_complete_trigger", "study_complete_trigger", "study_forcecomplete_trigger",
    "offpeak_start", "offpeak_end", "targets", "rules", "modules",
)


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(value if "//" in value else f"dicom://{value}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


@check("dicom", timeout=15, summary="C-ECHO to the DICOM endpoint; for Mercure also its web UI and mercure.json")
def check_dicom(ctx: Context, report: Report, timeout: float) -> None:
    from bidsflux.health.dicom import c_echo

    io = ctx.io_timeout(timeout)
    endpoint = ctx.site["dicom_endpoint"]
    host, port = _host_port(ctx.endpoints["dicom"], ctx.site["ports"]["dicom"])
    report.step = f"C-ECHO {endpoint['ae_title']}@{host}:{port}"
    echo = c_echo(host, port, endpoint["ae_title"], timeout=io)
    if echo.ok:
        report.ok(f"{echo.reason} in {echo.elapsed * 1000:.0f} ms")
    else:
        report.fail(echo.reason, f"check the {endpoint['kind']} receiver (docker service logs / docker compose logs) and dicom_endpoint.ae_title")
    if endpoint["kind"] != "mercure":
        return

    web = ctx.endpoints["mercure_web"].rstrip("/") + "/"
    report.step = f"GET {web}"
    try:
        resp = _http_get(web, io)
        if resp.status_code < 400:
            report.ok("Mercure web UI answers")
        else:
            report.fail(f"Mercure web UI {web} answered {resp.status_code}", "docker compose logs ui (in the Mercure folder)")
    except Exception as exc:  # noqa: BLE001
        report.fail(_http_problem(exc, web, io), "start Mercure (docker compose up -d in its folder) and check ports.mercure_web")

    path = Path(ctx.endpoints["mercure_config"])
    report.step = f"read {path}"
    if not path.parent.parent.exists():
        report.warn(f"{path.parent.parent} is not on this host, mercure.json not checked", "run health on the data server")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.fail(f"{path} does not exist", "bidsflux mercure apply writes it")
        return
    except (OSError, UnicodeDecodeError) as exc:
        report.fail(f"cannot read {path}: {exc.__class__.__name__}", "check the file's owner (Mercure's uid) and mode")
        return
    except json.JSONDecodeError as exc:
        report.fail(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); Mercure cannot load it", "bidsflux mercure apply rewrites it")
        return
    if not isinstance(data, dict):
        report.fail(f"{path} is not a JSON object", "bidsflux mercure apply rewrites it")
        return
    missing = [k for k in MERCURE_REQUIRED_KEYS if k not in data]
    wrong = [k for k in ("targets", "rules", "modules") if k in data and not isinstance(data[k], dict)]
    if missing or wrong:
        what = (f"missing {', '.join(missing)}" if missing else "") + ("; " if missing and wrong else "") + (
            f"not objects: {', '.join(wrong)}" if wrong else "")
        report.fail(f"{path}: {what}", "bidsflux mercure apply rewrites it")
    elif (path.parent / "mercure.lock").exists():
        report.warn(f"{path.parent / 'mercure.lock'} exists: Mercure will not read its configuration",
                    "remove the stale lock once no writer is running")
    else:
        report.ok(f"{path.name} loads with {len(data['rules'])} rule(s), {len(data['modules'])} module(s)")


# ---------------------------------------------------------------------------------------------
# disks


def data_paths(site: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in site["paths"].items():
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            label = f"paths.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            out.append((label, item["path"]))
    return out


@check("disks", timeout=10, summary="each data path's disk usage against health.disk_warn_percent / disk_fail_percent")
def check_disks(ctx: Context, report: Report, timeout: float) -> None:
    warn, fail = ctx.site["health"]["disk_warn_percent"], ctx.site["health"]["disk_fail_percent"]
    seen: dict[int, str] = {}
    for label, path in data_paths(ctx.site):
        report.step = f"statvfs {path}"
        p = Path(path)
        if not p.exists():
            report.warn(f"{label} {path} does not exist on this host", "run health on the node that holds it, or bidsflux bootstrap creates it")
            continue
        dev = p.stat().st_dev
        if dev in seen:
            continue
        seen[dev] = path
        usage = shutil.disk_usage(p)
        # As df counts it: space reserved for root counts as neither used nor available.
        percent = 100.0 * usage.used / max(1, usage.used + usage.free)
        free_gb = usage.free / 1e9
        text = f"{label} {path}: {percent:.0f}% used, {free_gb:.1f} GB free"
        if percent >= fail:
            report.fail(text + f" (fail at {fail}%)", f"free space or grow the disk holding {path}")
        elif percent >= warn:
            report.warn(text + f" (warn at {warn}%)", f"free space or grow the disk holding {path}")
        else:
            report.ok(text)


# ---------------------------------------------------------------------------------------------
# expiry


def _days_left(when: dt.datetime) -> float:
    return (when - _now()).total_seconds() / 86400


def _grade(report: Report, days: float, warn: int, fail: int, what: str, fix: str) -> None:
    if days < 0:
        report.fail(f"{what} expired {-days:.0f} day(s) ago", fix)
    elif days <= fail:
        report.fail(f"{what} expires in {days:.1f} day(s) (fail within {fail})", fix)
    elif days <= warn:
        report.warn(f"{what} expires in {days:.0f} day(s) (warn within {warn})", fix)
    else:
        report.ok(f"{what} valid for {days:.0f} more day(s)")


def certificate_expiry(host: str, port: int, timeout: float) -> dt.datetime:
    """notAfter of the certificate `host` presents, verified against the system's trust store
    (SSL_CERT_FILE adds a site CA); raises ssl.SSLError when it cannot be trusted."""
    context = ssl.create_default_context()
    with socket.create_connection((host, port), timeout=timeout) as sock, context.wrap_socket(sock, server_hostname=host) as tls:
        cert = tls.getpeercert()
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(str(cert["notAfter"])), dt.UTC)


@check("expiry", timeout=20, summary="bot tokens, TLS certificates of https endpoints, docker secrets past secrets.rotation_days")
def check_expiry(ctx: Context, report: Report, timeout: float) -> None:
    io = ctx.io_timeout(timeout)
    health = ctx.site["health"]
    warn, fail = health["token_warn_days"], health["token_fail_days"]
    base = ctx.endpoints["gitlab"].rstrip("/")

    for entry in bot_tokens(ctx):
        bot = entry.username
        token = ctx.secrets.get(entry.logical, entry.aliases)
        if token is None:
            report.warn(f"no token for {bot} available here, its expiry is not checked",
                        ctx.secrets.how_to_provide(entry.logical, entry.aliases))
            continue
        report.step = f"GET {base}/api/v4/personal_access_tokens/self ({bot})"
        try:
            info = _gitlab(ctx, token, io).personal_access_tokens.get("self")
        except Exception as exc:  # noqa: BLE001
            reason, fix = _gitlab_error(exc, f"{bot}'s token", base, io)
            report.fail(reason, fix)
            continue
        rotate = f"bidsflux gitlab tokens rotate {entry.key}"
        if getattr(info, "revoked", False) or getattr(info, "active", True) is False:
            report.fail(f"{bot}'s token is revoked or inactive", rotate)
            continue
        expires = getattr(info, "expires_at", None)
        if not expires:
            report.warn(f"{bot}'s token never expires", "issue tokens with an expiry (gitlab.yml users.*.token.expires_in_days)")
            continue
        # GitLab's expires_at is a date: the token stops working at the start of that day (UTC).
        when = dt.datetime.combine(dt.date.fromisoformat(str(expires)[:10]), dt.time(), dt.UTC)
        _grade(report, _days_left(when), warn, fail, f"{bot}'s token", rotate)

    for name, url in sorted(ctx.endpoints.items()):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            continue
        port = parts.port or 443
        report.step = f"TLS handshake {parts.hostname}:{port}"
        try:
            when = certificate_expiry(parts.hostname, port, io)
        except ssl.SSLCertVerificationError as exc:
            report.fail(f"{name} certificate at {parts.hostname}:{port} is not trusted: {exc.verify_message}",
                        "install a certificate for this host name from a CA clients trust")
            continue
        except (OSError, ssl.SSLError) as exc:
            report.fail(f"cannot fetch {name}'s certificate from {parts.hostname}:{port}: {_first_line(exc)}", "is the endpoint up?")
            continue
        _grade(report, _days_left(when), warn, fail, f"{name} TLS certificate ({parts.hostname})", "renew the certificate")

    report.step = "docker secret ls"
    rotation = ctx.site["secrets"]["rotation_days"]
    try:
        from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_SECRET, LABEL_STACK, LABEL_VERSION, docker_client

        client = docker_client()
        stack = ctx.site["site"]["name"]
        current: dict[str, tuple[int, dt.datetime | None]] = {}
        for s in client.secrets.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={stack}"]}):
            labels = (s.attrs.get("Spec") or {}).get("Labels") or {}
            try:
                logical, version = labels[LABEL_SECRET], int(labels[LABEL_VERSION])
            except (KeyError, ValueError):
                continue
            if version >= current.get(logical, (-1, None))[0]:
                current[logical] = (version, _parse_time(s.attrs.get("CreatedAt")))
    except UserError as exc:
        report.warn(f"secret ages not checked: {str(exc).splitlines()[0]}", "run health where the Docker engine is reachable")
        return
    except Exception as exc:  # noqa: BLE001 - e.g. not a manager
        report.warn(f"secret ages not checked: {_first_line(exc)}", "run health on a swarm manager")
        return
    old = []
    for logical, (version, created) in sorted(current.items()):
        if created is None:
            continue
        age = (_now() - created).total_seconds() / 86400
        if age > rotation:
            old.append(logical)
            report.warn(f"secret {logical} (v{version}) is {age:.0f} days old (rotation policy {rotation} days)",
                        f"bidsflux secrets rotate {logical}")
    if current and not old:
        report.ok(f"{len(current)} secret(s) younger than {rotation} days")
