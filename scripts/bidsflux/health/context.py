"""What checks read: the loaded site and its files, endpoints, bot tokens, HTTP and GitLab helpers."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.health.core import (
    ENDPOINT_NAMES,
    Context,
    Report,
    Secrets,
    default_endpoints,
    first_line,
)

# ---------------------------------------------------------------------------------------------
# loading


def load_context(site_path: str | None, root: str | None, endpoint_overrides: Mapping[str, str],
                 secrets_file: str | None, timeout: float | None, env: Mapping[str, str] | None = None) -> Context:
    from bidsflux.proxy.trust import ca_bundle_file
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
        ca_bundle=ca_bundle_file(site, env),
    )


# ---------------------------------------------------------------------------------------------
# helpers shared by checks


def http_get(url: str, timeout: float, **kwargs: Any) -> Any:
    import requests

    return requests.get(url, timeout=timeout, allow_redirects=True, **kwargs)


def http_problem(exc: Exception, url: str, timeout: float) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return f"{url} did not answer within {timeout:g}s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"{url}: TLS verification failed ({tls_reason(exc)})"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {url} (nothing listening, or DNS/firewall)"
    return f"{url}: {first_line(exc)}"


def tls_reason(exc: BaseException) -> str:
    """The verifier's own words (hostname mismatch, expired, unknown CA) from a wrapped SSL error."""
    import ssl

    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return str(e.verify_message)
        todo += [a for a in e.args if isinstance(a, BaseException)]
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return first_line(exc)[:200]


def gitlab_client(ctx: Context, token: str | None, timeout: float) -> Any:
    import gitlab

    return gitlab.Gitlab(ctx.endpoints["gitlab"], private_token=token, timeout=timeout, retry_transient_errors=False,
                         ssl_verify=ctx.verify)


def gitlab_error(exc: Exception, what: str, url: str, timeout: float) -> tuple[str, str]:
    import gitlab.exceptions as gle
    import requests

    if isinstance(exc, gle.GitlabAuthenticationError):
        return f"GitLab refused {what} (401: revoked, expired or wrong token)", "issue a new token (bidsflux gitlab tokens rotate) and store it"
    if isinstance(exc, gle.GitlabError):
        code = getattr(exc, "response_code", None)
        if code == 403:
            return f"{what} lacks permission (403)", "the token needs admin rights or the api/read_api scope"
        return f"GitLab answered {what} with {code}: {clip(str(exc), 200)}", "check GitLab's logs (gitlab-ctl tail)"
    if isinstance(exc, requests.RequestException):
        return http_problem(exc, url, timeout), "is GitLab running and reachable from here?"
    return f"{what}: {first_line(exc)}", "check GitLab"


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
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
# runners

CI_GLOBAL_KEYS = {"stages", "variables", "default", "include", "workflow", "image", "services",
                  "cache", "before_script", "after_script", "types", "pages"}


def inherited_key(ci: Mapping[str, Any], job: str, key: str, depth: int = 0) -> Any:
    """`key` of `job` following `extends` (a later parent wins, as in GitLab); None when unset."""
    spec = ci.get(job)
    if not isinstance(spec, dict) or depth > 10:
        return None
    if key in spec:
        return spec[key]
    parents = spec.get("extends") or []
    for parent in reversed([parents] if isinstance(parents, str) else list(parents)):
        found = inherited_key(ci, str(parent), key, depth + 1)
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
        if inherited_key(ci, job, "script") is None and inherited_key(ci, job, "trigger") is None:
            continue
        tags = inherited_key(ci, job, "tags")
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




def days_left(when: dt.datetime) -> float:
    return (when - utcnow()).total_seconds() / 86400


def grade(report: Report, days: float, warn: int, fail: int, what: str, fix: str) -> None:
    if days < 0:
        report.fail(f"{what} expired {-days:.0f} day(s) ago", fix)
    elif days <= fail:
        report.fail(f"{what} expires in {days:.1f} day(s) (fail within {fail})", fix)
    elif days <= warn:
        report.warn(f"{what} expires in {days:.0f} day(s) (warn within {warn})", fix)
    else:
        report.ok(f"{what} valid for {days:.0f} more day(s)")


