"""Projects that start from existing history: GitLab imports a URL, or bidsflux pushes a local clone/bundle (offline).

GitLab facts relied on (README "GitLab behaviours"): POST /projects with import_url first probes the
remote (422 "Unable to access repository ...", import/validate_remote_git_endpoint_service.rb),
then needs `git` in the application setting import_sources (403 otherwise; off by default since
16.0); the import itself runs in the background and ends with import_status `finished` or `failed`
(import_error). A site without internet cannot import from GitHub at all: give mirror_from a local
path (a clone or a `git bundle`) and bidsflux creates the project empty and pushes every branch and tag."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from bidsflux.diagnostics import UserError

IMPORT_TIMEOUT_S = 600.0


def create_imported(gl: Any, path: str, data: dict[str, Any], url: str, timeout: float = IMPORT_TIMEOUT_S,
                    interval: float = 1.0) -> Any:
    """Create `path` importing `url` and wait for the import to end; UserError naming the import when it fails."""
    import gitlab

    from bidsflux.gitlab.objects import scrub

    shown = scrub(_hide_userinfo(url), [])
    try:
        project = gl.projects.create({**data, "import_url": url})
    except gitlab.GitlabCreateError as exc:
        if exc.response_code == 403:
            raise UserError(f"GitLab refused to import {path} from {shown} (403): the `git` import source (\"Repository "
                            "by URL\") is disabled in GitLab's settings; `bidsflux gitlab apply` enables it when "
                            "gitlab.yml imports by URL (it needs an administrator's token), or give mirror_from a local "
                            "clone or bundle to push instead") from None
        if exc.response_code == 422:
            raise UserError(f"GitLab cannot reach {shown} to import {path} (422: {exc.error_message}); an offline site "
                            "cannot import from the internet: set mirror_from to a local clone or `git bundle` file, "
                            "which bidsflux pushes") from None
        raise
    deadline = time.monotonic() + timeout
    status = str(getattr(project, "import_status", "") or "")
    while status not in ("finished", "failed", "none"):
        if time.monotonic() > deadline:
            raise UserError(f"the import of {path} from {shown} did not finish within {timeout:.0f}s "
                            f"(import_status {status}); check it in GitLab and re-run")
        time.sleep(interval)
        project = gl.projects.get(project.id)
        status = str(getattr(project, "import_status", "") or "")
    if status == "failed":
        error = scrub(str(getattr(project, "import_error", "") or "no reason given"), [])[:300]
        raise UserError(f"the import of {path} from {shown} failed: {error}; fix mirror_from (or the source) and "
                        f"delete the empty project {path} before re-running")
    return project


def _hide_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"****@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def push_local(source: str, remote: str, token: str) -> None:
    """Push every branch and tag of a local clone or bundle to `remote` (token in an HTTP header via
    git's environment configuration, never in argv or a config file)."""
    import sh

    from bidsflux.gitlab.objects import scrub

    src = os.path.expanduser(source)
    if not os.path.exists(src):
        raise UserError(f"mirror_from {source}: no such local clone or bundle on this machine")
    basic = base64.b64encode(f"oauth2:{token}".encode()).decode()
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"}
    try:
        if os.path.isfile(src):  # a bundle: fetch it into a scratch bare repository first
            import tempfile

            with tempfile.TemporaryDirectory(prefix="bidsflux-bundle-") as tmp:
                sh.git("clone", "-q", "--mirror", src, tmp, _env=env, _err_to_out=True)
                _push_all(tmp, remote, env)
        else:
            _push_all(src, remote, env)
    except sh.ErrorReturnCode as exc:
        out = scrub(exc.stdout.decode(errors="replace"), [token, basic]).strip().splitlines()
        raise UserError(f"pushing {source} to {remote} failed: {out[-1] if out else 'no output'}") from None


def _push_all(repo: str, remote: str, env: dict[str, str]) -> None:
    import sh

    sh.git("-C", repo, "push", "-q", remote, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*", _env=env,
           _err_to_out=True)
