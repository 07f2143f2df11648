"""The GitLab connection: python-gitlab client without retries, errors as UserErrors without secrets, loading the config."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bidsflux.diagnostics import UserError, clip


def scrub(text: str, secrets: list[str]) -> str:
    """The scrubbing all output gets (bidsflux.redact): known values, token shapes, URL credentials."""
    from bidsflux import redact

    return redact.scrub(text, secrets)


@contextmanager
def gitlab_errors(what: str, url: str, secrets: list[str] | None = None) -> Iterator[None]:
    """python-gitlab and connection errors as UserErrors naming the cause and the fix."""
    import gitlab
    import requests

    try:
        yield
    except gitlab.GitlabAuthenticationError:
        raise UserError(f"GitLab at {url} refused the token while {what} (401: wrong, expired or revoked token); "
                        "pass a valid admin token (--token-env) or mint one with `bidsflux gitlab root-token`") from None
    except gitlab.GitlabError as exc:
        code = exc.response_code
        body = clip(scrub(str(exc.error_message), secrets or []), 300)
        if code == 403:
            fix = "the token lacks a scope or admin rights: use an administrator's token with the api scope"
        elif code and code >= 500:
            fix = "GitLab failed on its side; check its health (bidsflux health) and re-run: applying is idempotent"
        elif code == 404:
            fix = "the object is missing or the token cannot see it"
        else:
            fix = "fix the value in stack/gitlab.yml and re-run"
        raise UserError(f"GitLab answered {code} while {what}: {body}; {fix}") from None
    except requests.exceptions.RequestException as exc:
        first = clip(scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, secrets or []), 200)
        waited = ""
        if isinstance(exc, requests.exceptions.Timeout):
            from bidsflux.console import connect_timeout

            waited = f"no answer within {connect_timeout():g}s; "
        raise UserError(f"cannot reach GitLab at {url} while {what} ({waited}{first}); check the URL (--url), that "
                        "GitLab is up (bidsflux health), or wait longer with --connect-timeout") from None


def site_url(site: Mapping[str, Any]) -> str:
    """https://<hosts.gitlab>[:<ports.https>], GitLab's external URL behind the TLS proxy."""
    from bidsflux.site.endpoints import gitlab_url

    return gitlab_url(site)


def connect(url: str, token: str, timeout: float | None = None, site: Mapping[str, Any] | None = None) -> Any:
    """A python-gitlab client that never retries on its own (a retried rotation is dangerous);
    each request waits `timeout` seconds (default: --connect-timeout). It verifies TLS with the
    site's CA bundle (proxy.trust), never without verification."""
    import gitlab

    from bidsflux.console import connect_timeout
    from bidsflux.proxy.trust import requests_verify

    timeout = connect_timeout() if timeout is None else timeout

    gl = gitlab.Gitlab(url, private_token=token, timeout=timeout, retry_transient_errors=False, keep_base_url=True,
                       ssl_verify=requests_verify(site))
    with gitlab_errors("checking the token", url, [token]):
        gl.auth()
    logging.getLogger("bidsflux").info("GitLab at %s: signed in as %s (timeout %gs)", url,
                                       getattr(gl.user, "username", "?"), timeout)
    return gl


def get_or_none(getter: Callable[[], Any]) -> Any:
    import gitlab

    try:
        return getter()
    except gitlab.GitlabGetError as exc:
        if exc.response_code == 404:
            return None
        raise



def load_config(repo: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(gitlab.yml, site.yml) as plain data, after validate found nothing wrong."""
    from bidsflux.site.yamlsource import load
    from bidsflux.validation import load_valid

    site_doc, _ = load_valid(repo)
    return load(repo.gitlab_file, repo.root).data or {}, site_doc.data


def secret_values_from(site: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Secret values known here: the values file (when readable), then BIDSFLUX_SECRET_<NAME> overrides."""
    from bidsflux.swarm import secretstore

    values: dict[str, str] = {}
    path = (site.get("secrets") or {}).get("file")
    if path:
        try:
            values.update(secretstore.read_values_file(path))
        except OSError:
            pass  # not root, or not on the manager: secrets stay unknown and only flags are compared
    for k, v in environ.items():
        if k.startswith("BIDSFLUX_SECRET_"):
            values[k[len("BIDSFLUX_SECRET_"):].lower()] = v
    return values

