"""`validate` rules for the `tls` section of site.yml: every https host has a certificate source,
and a certificate the site provides covers every name, is current, and its key stays out of git."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from bidsflux.diagnostics import Diagnostic
from bidsflux.proxy import certs
from bidsflux.site.endpoints import PROXIED_HOSTS
from bidsflux.site.yamlsource import Document

# Names no public ACME CA issues for (RFC 6761/6762/8375 special-use and common private suffixes).
NON_PUBLIC_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".test", ".example", ".invalid", ".intranet", ".corp")


def _repo_root(site: Document) -> Path:
    # stack/site.yml lives in <root>/stack; a site file elsewhere resolves relative paths beside it.
    return site.path.resolve().parents[1] if site.path.parent.name == "stack" else site.path.resolve().parent


def _not_public(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return "an IP address"
    except ValueError:
        pass
    h = host.lower().rstrip(".")
    if "." not in h or h == "localhost":
        return "a single-label name"
    for suffix in NON_PUBLIC_SUFFIXES:
        if h.endswith(suffix):
            return f"under {suffix[1:]}, which is not a public domain"
    return None


def check_site_tls(site: Document, _site: Document, _template: Document | None) -> list[Diagnostic]:
    data = site.data
    tls = data.get("tls") or {}
    source = tls.get("certificates")
    hosts = data["hosts"]
    out: list[Diagnostic] = []
    if source == "files" and not tls.get("files"):
        names = ", ".join(f"hosts.{k}" for k in PROXIED_HOSTS)
        out.append(site.diagnostic(["tls", "certificates"], f"files, but there is no tls.files: {names} are served over "
                                   "https without a certificate source; add tls.files.cert/key, or use site_ca"))
    if source == "acme":
        if not tls.get("acme"):
            out.append(site.diagnostic(["tls", "certificates"], "acme, but there is no tls.acme (email): add it, or use site_ca"))
        for key in PROXIED_HOSTS:
            # An internal ACME CA (tls.acme.ca) may issue for internal names; a public one may not.
            why = None if (tls.get("acme") or {}).get("ca") else _not_public(hosts[key])
            if why:
                out.append(site.diagnostic(["hosts", key], f"{hosts[key]} is {why}: an ACME CA cannot issue its certificate, "
                                           "so it would be served over https without one; use tls.certificates site_ca or files"))
    if source == "site_ca":
        ca = tls.get("site_ca") or {}
        if int(ca.get("renew_days", 30)) >= int(ca.get("cert_days", 397)):
            out.append(site.diagnostic(["tls", "site_ca", "renew_days"], "must be below cert_days, or every apply renews"))
    if source == "files" and tls.get("files"):
        out += _check_files(site, tls["files"], hosts)
    return out


def _check_files(site: Document, files: dict[str, str], hosts: dict[str, str]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    root = _repo_root(site)
    key = Path(files["key"])
    if key.resolve().is_relative_to(root):
        out.append(site.diagnostic(["tls", "files", "key"], "the private key is inside the repository; keep it on the manager only"))
    for name in ("cert", "ca"):
        if name not in files:
            continue
        path = Path(files[name]) if Path(files[name]).is_absolute() else root / files[name]
        if not path.exists():
            if not Path(files[name]).is_absolute():
                out.append(site.diagnostic(["tls", "files", name], f"{files[name]} does not exist in the repository"))
            # An absolute path lives on the manager: `bidsflux tls plan` checks it there.
            continue
        try:
            chain = certs.load_chain(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            out.append(site.diagnostic(["tls", "files", name], f"{files[name]} is not a PEM certificate ({str(exc)[:120]})"))
            continue
        info = certs.info(chain[0])
        if info.days_left() < 0:
            out.append(site.diagnostic(["tls", "files", name], f"{files[name]} expired on {info.not_after:%Y-%m-%d}"))
        if name != "cert":
            continue
        for host_key in PROXIED_HOSTS:
            if not certs.covers(info.names, hosts[host_key]):
                shown = ", ".join(info.names) or "none"
                out.append(site.diagnostic(["hosts", host_key], f"{hosts[host_key]} is not covered by the certificate "
                                           f"{files['cert']} (its names: {shown})"))
    return out
