"""What looks like a credential written into a site file (which lands in git, mercure.json or a CI
variable in plain text): names of environment variables and keys, and values by their shape."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.yamlsource import Document

# Parts of a name that mean "secret" wherever they appear (DBPASSWORD, MY_SECRET_X, APIKEY).
_SECRET_SUBSTRINGS = re.compile(r"PASSW|SECRET|TOKEN|CREDENTIAL|APIKEY|PRIVATE_?KEY|ACCESS_?KEY", re.I)
# Whole words of a name (split at _ - .) that mean "secret": DB_PASS, MYSQL_PWD, S3_KEY, SSH_KEY,
# GITLAB_PAT, AUTH, CREDS.
_SECRET_WORDS = frozenset({"PASS", "PWD", "KEY", "KEYS", "PAT", "AUTH", "CREDS", "COOKIE", "SALT", "PIN"})
# A name ending in _FILE whose value is a path follows the Docker secrets convention
# (POSTGRES_PASSWORD_FILE=/run/secrets/x): the value is where the secret is, not the secret.
_FILE_SUFFIX = re.compile(r"[_-]FILE$", re.I)
# Token shapes. GitLab's prefixes: https://docs.gitlab.com/security/tokens/#token-prefixes
# (glpat- personal/project/group access, glrt- runner auth, GR1348941 runner registration,
# gldt- deploy, glptt- pipeline trigger, glcbt- CI build, glimt- incoming mail, glsoat- SCIM,
# glffct- feature flags, glft- feed, glagent- agent, gloas- OAuth secret); AWS access key ids
# (AKIA/ASIA + 16); PEM private keys; GitHub (ghp_, gho_, ghs_, ghu_, github_pat_); Slack (xox?-).
_TOKEN_VALUE = re.compile(
    r"\b(?:glpat|glrt|gldt|glptt|glcbt|glimt|glsoat|glffct|glft|glagent|gloas)-[0-9A-Za-z_.-]{8,}"
    r"|\bGR1348941[0-9A-Za-z_-]{8,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:gh[pousr]_[0-9A-Za-z]{20,}|github_pat_[0-9A-Za-z_]{20,})|\bxox[abposr]-[0-9A-Za-z-]{10,}"
)
# scheme://user:password@host (DATABASE_URL=postgres://u:pw@db/x, amqp://guest:guest@rabbit/)
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:]*:[^\s/@]+@", re.I)


def name_is_credential(name: str) -> bool:
    if _SECRET_SUBSTRINGS.search(name):
        return True
    return any(word.upper() in _SECRET_WORDS for word in re.split(r"[_.\-]+", name))


def value_credential(value: Any) -> str | None:
    """What in `value` is a credential (a token or a password in a URL), else None."""
    if not isinstance(value, str):
        return None
    if _TOKEN_VALUE.search(value):
        return "holds a token"
    if _URL_PASSWORD.search(value):
        return "holds a URL with a password in it"
    return None


def credential_problem(name: str, value: Any) -> str | None:
    """Why `name: value` looks like a credential written in plain text, else None."""
    found = value_credential(value)
    if found:
        return found
    if isinstance(value, str) and ("{{" in value or (_FILE_SUFFIX.search(name) and value.startswith("/"))):
        return None  # a template or a path to a secret file, not the secret itself
    if name_is_credential(name) and value not in (None, "", False):
        return "looks like a secret by its name"
    return None


def check_mapping(doc: Document, path: list[object], mapping: Mapping[str, Any], advice: str) -> list[Diagnostic]:
    """One diagnostic per entry of `mapping` that looks like a credential."""
    out = []
    for key, value in mapping.items():
        problem = credential_problem(str(key), value)
        if problem:
            out.append(doc.diagnostic([*path, key], f"{problem}: {advice}"))
    return out
