"""The proxy's Caddyfile, rendered from site.yml: one site block per public host, routed by
host name to the service behind it, TLS from the site's certificate source, HTTP -> HTTPS.

Certificates (site_ca, files) are not named in the Caddyfile: Caddy asks for them at each TLS
handshake (`get_certificate http`) from a file server of its own bound to 127.0.0.1, which serves
certs/current.pem. Replacing that one file rotates the certificate with no reload at all: a
config reload closes connections the old server accepted a moment before (seen in tests), a
file swap closes nothing.

Ports, upstreams and the folder Caddy sees the certificates in are parameters: the stack's
proxy uses ports.http/https, the swarm service names and /etc/caddy/bidsflux; tests run the
same text against stand-in backends on 127.0.0.1 and free ports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Inside the proxy container: the bind mount of paths.state_dir/proxy (stack template).
CONTAINER_DIR = "/etc/caddy/bidsflux"
ADMIN = "localhost:2019"
CERT_PORT = 2020  # the loopback-only server Caddy fetches its certificate from
CERT_FILE = "current.pem"  # certificate chain then private key, in cert_dir
ACME_ROOT = "acme-ca-root.pem"  # tls.acme.ca_root, copied into the proxy folder
# Mercure runs under docker compose, outside the swarm: the proxy reaches its UI on the data
# server's published port through Docker's host gateway (extra_hosts in the stack template).
MERCURE_HOST = "host.docker.internal"


@dataclass
class CaddyOptions:
    http_port: int
    https_port: int
    upstreams: dict[str, str]  # host key (hosts.*) -> host:port behind the proxy
    cert_dir: str = f"{CONTAINER_DIR}/certs"  # where Caddy's loopback server reads current.pem
    admin: str = ADMIN
    cert_port: int = CERT_PORT
    config_dir: str = CONTAINER_DIR  # where Caddy sees the proxy folder (the Caddyfile's folder)
    extra_global: list[str] = field(default_factory=list)


def default_upstreams(site: Mapping[str, Any]) -> dict[str, str]:
    """Where each public host goes inside the overlay network. `tasks.<stack>_<service>` names
    the running tasks themselves (Docker's DNS): no virtual IP in between, so it also works where
    IPVS does not, and Caddy resolves it on every connection, so replaced tasks are found."""
    ports = site["ports"]
    stack = site["site"]["name"]
    up = {
        "gitlab": f"tasks.{stack}_gitlab:80",
        "registry": f"tasks.{stack}_gitlab:{ports['registry']}",
        "s3": f"tasks.{stack}_minio:{ports['s3_api']}",
        "s3_console": f"tasks.{stack}_minio:{ports['s3_console']}",
    }
    if site["dicom_endpoint"]["kind"] == "mercure":
        up["dicom"] = f"{MERCURE_HOST}:{ports['mercure_web']}"
    return up


def stack_options(site: Mapping[str, Any]) -> CaddyOptions:
    return CaddyOptions(int(site["ports"]["http"]), int(site["ports"]["https"]), default_upstreams(site))


def is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def reload_on_new_certificate(site: Mapping[str, Any]) -> bool:
    """Hosts that are IP addresses get no SNI from clients, and Caddy asks no certificate
    manager without one: their certificate is loaded from the file, so a new one needs a reload."""
    return site["tls"]["certificates"] != "acme" and any(is_ip(h) for h in site["hosts"].values())


def render(site: Mapping[str, Any], options: CaddyOptions) -> str:
    """The Caddyfile. With ACME Caddy obtains and renews certificates itself."""
    tls = site["tls"]
    acme = tls["certificates"] == "acme"
    lines = [
        "# Written by `bidsflux tls apply` from stack/site.yml. Do not edit: it is rewritten.",
        "{",
        f"\tadmin {options.admin}",
        f"\thttp_port {options.http_port}",
        # Old connections finish on reload; long registry pushes get time to complete.
        "\tgrace_period 30s",
        # Caddy would add its own local CA to the system's trust store when it issues a
        # certificate itself (internal names): never, ours is the only CA clients get.
        "\tskip_install_trust",
    ]
    if not acme:
        # Certificates come from bidsflux: Caddy must never try ACME, only redirect http -> https.
        lines.append("\tauto_https disable_certs")
    lines += [*[f"\t{g}" for g in options.extra_global], "}", ""]
    if not acme:
        # Only this machine's loopback (inside the proxy container): it serves the private key.
        lines += [f"http://127.0.0.1:{options.cert_port} {{", "\tbind 127.0.0.1", f"\t@pem path /{CERT_FILE}",
                  "\thandle @pem {", f"\t\troot * {options.cert_dir}", "\t\tfile_server", "\t}",
                  "\thandle {", "\t\trespond 404", "\t}", "}", ""]
    hosts = site["hosts"]
    done: set[str] = set()
    for key in ("gitlab", "registry", "s3", "s3_console", "dicom"):
        upstream = options.upstreams.get(key)
        host = hosts[key]
        if upstream is None or host in done:
            continue
        done.add(host)
        # An explicit port when it is not 443 (and no global https_port: Caddy leaves out of its
        # http -> https redirect whatever port it takes as the default, which clients would not).
        port = "" if options.https_port == 443 else f":{options.https_port}"
        lines.append(f"https://{host}{port} {{")
        if acme:
            # An explicit ACME issuer for every name: Caddy would otherwise sign internal-looking
            # names (*.localhost, IPs) with its own local CA instead of asking the ACME CA.
            acme_tls = tls["acme"]
            lines.append(f"\ttls {acme_tls['email']} {{")
            if acme_tls.get("ca"):
                lines.append(f"\t\tca {acme_tls['ca']}")
            if acme_tls.get("ca_root"):
                # apply copies the root next to the Caddyfile (the proxy sees only that folder).
                lines.append(f"\t\tca_root {options.config_dir}/{ACME_ROOT}")
            lines.append("\t}")
        elif is_ip(host):
            pem = f"{options.cert_dir}/{CERT_FILE}"  # certificate chain and key in one file
            lines.append(f"\ttls {pem} {pem}")
        else:
            lines += ["\ttls {", f"\t\tget_certificate http http://127.0.0.1:{options.cert_port}/{CERT_FILE}", "\t}"]
        if key == "registry":
            # Registry blobs are large and streamed: no buffering, no response timeout.
            lines += [f"\treverse_proxy {upstream} {{", "\t\tflush_interval -1", "\t}"]
        else:
            lines.append(f"\treverse_proxy {upstream}")
        lines += ["}", ""]
    return "\n".join(lines)
