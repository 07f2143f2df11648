"""The health runner: results, the check registry, concurrent runs with deadlines, secrets and endpoints.

Health checks for a running site: each check says ok, warn or fail, why, and what fixes it.

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

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.site.endpoints import https_url

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


def endpoint_url(scheme: str, host: str, port: int, default_port: int) -> str:
    return f"{scheme}://{host}" + ("" if port == default_port else f":{port}")


def default_endpoints(site: Mapping[str, Any]) -> dict[str, str]:
    hosts, ports = site["hosts"], site["ports"]
    return {
        # Every web endpoint is behind the TLS proxy on ports.https (site.endpoints).
        "gitlab": https_url(site, "gitlab"),
        "registry": https_url(site, "registry"),
        "s3": https_url(site, "s3"),
        "dicom": f"{hosts['dicom']}:{ports['dicom']}",
        "mercure_web": https_url(site, "dicom"),
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
    # The CA bundle https endpoints are verified with (proxy.trust); None: the system store.
    ca_bundle: str | None = None

    @property
    def verify(self) -> str | bool:
        """`verify=` for requests, python-gitlab and boto3: verification is never turned off."""
        return self.ca_bundle or True

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


def scrub(text: str, secrets: list[str]) -> str:
    from bidsflux import redact

    return redact.scrub(text, secrets)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {clip(text[0], 300)}" if text else exc.__class__.__name__


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
            report.fail(f"the check itself failed: {first_line(exc)}", "report this as a bidsflux bug")
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
        r.reason = scrub(r.reason, secrets)
        r.fix = scrub(r.fix, secrets)
        r.details = [scrub(d, secrets) for d in r.details]
    return results


def overall(results: Iterable[Result]) -> Status:
    worst = max((r.status.rank for r in results), default=0)
    return [Status.OK, Status.WARN, Status.FAIL][worst]


