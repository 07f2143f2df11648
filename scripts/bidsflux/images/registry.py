"""Image references and what a registry says a tag is: the Registry HTTP API v2 manifest HEAD
(Docker-Content-Digest), with the registry's Basic or Bearer token authentication.

Sources: distribution's spec (docs/spec/api.md "Pulling an Image Manifest", "Existing Manifests":
HEAD /v2/<name>/manifests/<reference> answers the digest in Docker-Content-Digest) and
docs/spec/auth/token.md (401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`;
GET realm?service=&scope= with Basic credentials answers {"token"} or {"access_token"}). GitLab's
registry uses that token flow (realm https://<gitlab>/jwt/auth); distribution's htpasswd backend
answers `Basic`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bidsflux.diagnostics import UserError

# Accepted manifest kinds, so the registry answers the digest it stored (an index for multi-arch
# images, otherwise the image manifest) instead of converting to schema 1.
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._/:-]*?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
                  r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$")


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port]; "" for Docker Hub names
    repository: str  # path in the registry
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def with_digest(self, tag: str, digest: str) -> str:
        return f"{self.name}:{tag}@{digest}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse(ref: str) -> ImageRef:
    m = _REF.match(ref)
    if not m or m.group("name").endswith(":"):
        raise UserError(f"'{ref}' is not an image reference (registry/name:tag or name:tag@sha256:...)")
    name = m.group("name")
    first, _, rest = name.partition("/")
    # As Docker does: the first component is a registry when it has a dot or a port, or is localhost.
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ImageRef(first, rest, m.group("tag"), m.group("digest"))
    return ImageRef("", name, m.group("tag"), m.group("digest"))


@dataclass
class Credentials:
    username: str
    password: str


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}


class Registry:
    """One registry over HTTPS, verified with `verify` (a CA bundle path or True)."""

    def __init__(self, address: str, credentials: Credentials | None, verify: str | bool = True,
                 timeout: float = 15.0, scheme: str = "https") -> None:
        import requests

        self.base = f"{scheme}://{address}"
        self.address = address
        self.credentials = credentials
        self.session = requests.Session()
        self.verify = verify  # per request: requests lets REQUESTS_CA_BUNDLE override a session's verify
        self.timeout = timeout
        self._auth: dict[str, str] = {}  # repository -> Authorization header

    def _request(self, method: str, path: str, repository: str, headers: Mapping[str, str]) -> Any:
        import requests

        url = f"{self.base}{path}"
        try:
            resp = self.session.request(method, url, headers={**headers, **self._header(repository)},
                                        timeout=self.timeout, allow_redirects=True, verify=self.verify)
            if resp.status_code == 401 and "WWW-Authenticate" in resp.headers:
                self._login(repository, resp.headers["WWW-Authenticate"])
                resp = self.session.request(method, url, headers={**headers, **self._header(repository)},
                                            timeout=self.timeout, allow_redirects=True, verify=self.verify)
        except requests.exceptions.SSLError as exc:
            raise UserError(f"the registry {self.address} has a certificate this host does not trust ({exc.__class__.__name__}); "
                            "give the site CA with BIDSFLUX_CA_BUNDLE (bootstrap uses the proxy's own bundle)") from None
        except requests.exceptions.RequestException as exc:
            raise UserError(f"cannot reach the registry {self.address} ({exc.__class__.__name__})") from None
        return resp

    def _header(self, repository: str) -> dict[str, str]:
        value = self._auth.get(repository)
        return {"Authorization": value} if value else {}

    def _login(self, repository: str, header: str) -> None:
        import base64

        import requests

        scheme, params = _challenge(header)
        if self.credentials is None:
            raise UserError(f"the registry {self.address} asks for credentials to read {repository}; give them with "
                            "--user-env/--password-env (bootstrap uses its admin token)")
        basic = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
        if scheme == "basic":
            self._auth[repository] = f"Basic {basic}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise UserError(f"the registry {self.address} asks for an authentication this client does not speak ({scheme})")
        query = {"service": params.get("service", ""), "scope": params.get("scope") or f"repository:{repository}:pull"}
        try:
            resp = self.session.get(params["realm"], params=query, headers={"Authorization": f"Basic {basic}"},
                                    timeout=self.timeout, verify=self.verify)
        except requests.exceptions.RequestException as exc:
            raise UserError(f"cannot reach the registry's token service {params['realm']} ({exc.__class__.__name__})") from None
        if resp.status_code != 200:
            raise UserError(f"the registry's token service {params['realm']} refused the credentials of "
                            f"{self.credentials.username} (HTTP {resp.status_code})")
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise UserError(f"the registry's token service {params['realm']} answered no token")
        self._auth[repository] = f"Bearer {token}"

    def digest(self, repository: str, reference: str) -> str | None:
        """The digest of repository:reference (a tag or a digest), None when the registry has no such manifest."""
        resp = self._request("HEAD", f"/v2/{repository}/manifests/{reference}", repository, {"Accept": MANIFEST_TYPES})
        if resp.status_code == 404:
            return None
        if resp.status_code in (401, 403):
            raise UserError(f"the registry {self.address} refused to show {repository}:{reference} (HTTP {resp.status_code}); "
                            "do the credentials allow reading it?")
        if resp.status_code != 200:
            raise UserError(f"the registry {self.address} answered HTTP {resp.status_code} for {repository}:{reference}")
        digest = resp.headers.get("Docker-Content-Digest", "")
        if not DIGEST.match(digest):
            raise UserError(f"the registry {self.address} gave no sha256 Docker-Content-Digest for {repository}:{reference}")
        return digest
