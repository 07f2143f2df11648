"""Keeping secret values out of everything bidsflux shows: CLI output, plans, MR notes, issues.

One scrubber for all of them: known values (the values file, BIDSFLUX_SECRET_*, the pipeline's
credential variables), GitLab token shapes, and credentials inside URLs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

HIDDEN = "****"
# GitLab token prefixes (doc: security/tokens/index.md, "Token prefixes").
_TOKEN = re.compile(r"\b(glpat-|glrt-|gldt-|glptt-|glcbt-|glimt-|glagent-|glsoat-|gloas-|GR1348941)[A-Za-z0-9_\-.]{8,}")
# scheme://user:password@host -> scheme://****@host (also oauth2:<token>@ in git remotes).
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@")
# CI variables whose values are credentials wherever a job runs (GitLab's predefined ones and ours).
CREDENTIAL_VARIABLES = ("BIDSFLUX_GITLAB_TOKEN", "CI_JOB_TOKEN", "CI_REGISTRY_PASSWORD", "CI_DEPLOY_PASSWORD",
                        "CI_DEPENDENCY_PROXY_PASSWORD", "S3_ID", "S3_SECRET")
# Shorter values would scrub ordinary words; every secret bidsflux generates is longer.
MIN_LENGTH = 6


def strip_url_credentials(text: str) -> str:
    return _URL_CREDENTIALS.sub(rf"\1{HIDDEN}@", text)


def scrub(text: str, known: Iterable[str] = ()) -> str:
    """`text` without any known value, token-shaped string or URL credential."""
    for value in sorted({v for v in known if v and len(v) >= MIN_LENGTH}, key=len, reverse=True):
        text = text.replace(value, HIDDEN)
    text = _TOKEN.sub(lambda m: m.group(1) + HIDDEN, text)
    return strip_url_credentials(text)


def scrub_data(value: Any, known: Iterable[str] = ()) -> Any:
    """The same scrubbing through a JSON-like structure (plans written as artifacts)."""
    known = list(known)
    if isinstance(value, str):
        return scrub(value, known)
    if isinstance(value, Mapping):
        return {k: scrub_data(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_data(v, known) for v in value]
    return value


def known_values(env: Mapping[str, str], stored: Iterable[str] = ()) -> list[str]:
    """Secret values this process can know: `stored` (the values file, read by the caller),
    BIDSFLUX_SECRET_* and the credential variables of the environment."""
    found = [v for k, v in env.items() if k.startswith("BIDSFLUX_SECRET_") and v]
    found += [env[k] for k in CREDENTIAL_VARIABLES if env.get(k)]
    found += [v for v in stored if v]
    return sorted({v for v in found if len(v) >= MIN_LENGTH}, key=len, reverse=True)


def env_change(desired: Mapping[str, str] | None, live: Mapping[str, str] | None) -> dict[str, Any]:
    """An environment difference by key name only: values may be secrets, so a plan says which
    keys are added, changed or removed, never what they hold."""
    desired, live = dict(desired or {}), dict(live or {})
    keys = sorted(k for k in set(desired) | set(live) if desired.get(k) != live.get(k))
    what = {k: "added" if k not in live else "removed" if k not in desired else "changed" for k in keys}
    return {"live": sorted(k for k in keys if k in live) or None, "desired": what}
