"""Public addresses derived from site.yml: the https URL of every host behind the TLS proxy, the
registry address Docker uses, and where clients find the CA bundle they must trust.

Every public service is served by the proxy on ports.https; these helpers are the one place
that turns hosts/ports into URLs, so render, health, gitlab and proxy agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The CA bundle (tls_ca_bundle secret) inside every client container.
CA_BUNDLE_PATH = "/run/secrets/site-ca.crt"
# What the indexer (Python requests, git, git-annex, OpenSSL/curl) reads the CA bundle from.
# SYSTEM_CERTIFICATE_PATH: the Haskell TLS stack git-annex's S3 remote uses (x509-system).
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "SYSTEM_CERTIFICATE_PATH")
# Public host keys the proxy serves, with the service behind each.
PROXIED_HOSTS = ("gitlab", "registry", "s3", "s3_console", "dicom")


def https_port(site: Mapping[str, Any]) -> int:
    return int(site["ports"]["https"])


def host_port(site: Mapping[str, Any], host_key: str) -> str:
    """`host` on 443, `host:port` otherwise: how Docker names a registry and how URLs carry it."""
    host = site["hosts"][host_key]
    port = https_port(site)
    return host if port == 443 else f"{host}:{port}"


def https_url(site: Mapping[str, Any], host_key: str) -> str:
    return f"https://{host_port(site, host_key)}"


def gitlab_url(site: Mapping[str, Any]) -> str:
    """GitLab's external_url."""
    return https_url(site, "gitlab")


def registry_address(site: Mapping[str, Any]) -> str:
    """The registry as `docker login` and image names spell it (also its certs.d folder name)."""
    return host_port(site, "registry")


def proxied_hosts(site: Mapping[str, Any]) -> list[str]:
    """Every name the proxy answers for (the certificate must cover each)."""
    names = []
    for key in PROXIED_HOSTS:
        if site["hosts"][key] not in names:
            names.append(site["hosts"][key])
    return names


def ca_client_environment(path: str = CA_BUNDLE_PATH) -> dict[str, str]:
    """Environment that makes requests, git, git-annex and curl verify against the site's CA bundle."""
    return {name: path for name in CA_BUNDLE_ENV}


def host_ca_bundle(site: Mapping[str, Any]) -> str:
    """The CA bundle on the manager (paths.state_dir/proxy/ca.crt), written by `bidsflux tls apply`;
    containers started outside the swarm (Mercure's modules) mount it at CA_BUNDLE_PATH."""
    return f"{str(site['paths']['state_dir']['path']).rstrip('/')}/proxy/ca.crt"


def docker_readonly_socket(site: Mapping[str, Any]) -> str:
    """The read-only Docker API's socket on the host: docker.sock in paths.docker_readonly, where
    the docker-readonly service creates it and runners with the mount docker_readonly find it."""
    return str(site["paths"]["docker_readonly"]["path"]).rstrip("/") + "/docker.sock"
