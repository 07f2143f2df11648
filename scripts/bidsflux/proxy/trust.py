"""Trust for clients: the CA bundle bidsflux's own clients verify with (they never disable
verification), and the bundle's content per certificate source."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bidsflux.site.endpoints import host_ca_bundle

# Written by `bidsflux tls apply` next to the proxy's files: what clients must trust.
BUNDLE_NAME = "ca.crt"


def proxy_dir(site: Mapping[str, Any]) -> Path:
    """paths.state_dir/proxy on the manager: Caddyfile, certificates, the CA bundle."""
    return Path(host_ca_bundle(site)).parent


def ca_bundle_file(site: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle to verify the site's https endpoints with, first found: BIDSFLUX_CA_BUNDLE,
    the bundle bidsflux keeps on the manager, CI_SERVER_TLS_CA_FILE (pipeline jobs get GitLab's
    CA chain from the runner's tls-ca-file). None: the default store (which REQUESTS_CA_BUNDLE
    and SSL_CERT_FILE already steer)."""
    env = os.environ if env is None else env
    if env.get("BIDSFLUX_CA_BUNDLE"):
        return env["BIDSFLUX_CA_BUNDLE"]
    if site is not None:
        try:
            local = proxy_dir(site) / BUNDLE_NAME
            if local.is_file() and os.access(local, os.R_OK):
                return str(local)
        except (KeyError, TypeError, OSError):
            pass
    if env.get("CI_SERVER_TLS_CA_FILE") and Path(env["CI_SERVER_TLS_CA_FILE"]).is_file():
        return env["CI_SERVER_TLS_CA_FILE"]
    return None


def requests_verify(site: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> str | bool:
    """`verify=` for requests/python-gitlab/boto3: a bundle path, or True (system store)."""
    return ca_bundle_file(site, env) or True


def public_roots() -> str:
    """The public CAs (certifi's bundle): what clients trust for ACME or publicly issued files."""
    import certifi

    return Path(certifi.where()).read_text(encoding="utf-8")
