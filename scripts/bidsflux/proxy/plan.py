"""The TLS plan: what the site's certificate source asks for (desired), what the manager holds
(observed: the CA in the values file, the proxy folder, the tls_ca_bundle secret), and the
typed changes between them. Applying them is proxy/apply.py."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.proxy import caddyfile, certs
from bidsflux.proxy.trust import BUNDLE_NAME, proxy_dir, public_roots
from bidsflux.site import endpoints

# Values-file entries (secrets.file, root only): the site CA, and the one it replaced while
# clients may still meet certificates it issued.
CA_CERT, CA_KEY, CA_PREVIOUS = "tls_ca_cert", "tls_ca_key", "tls_ca_cert_previous"
BUNDLE_SECRET = "tls_ca_bundle"
LABEL_DIGEST = "io.bidsflux.sha256"
CERT_DIR = "certs"
_KEY_START = re.compile(r"^-----BEGIN (?:EC |RSA )?PRIVATE KEY-----", re.M)


@dataclass
class Desired:
    site: Mapping[str, Any]
    source: str  # site_ca | files | acme
    names: list[str]
    folder: Path  # paths.state_dir/proxy on the manager
    cert_days: int = 397
    renew_days: int = 30
    ca_days: int = 3650
    files: dict[str, Path] = field(default_factory=dict)  # cert, key, ca (files source)
    options: caddyfile.CaddyOptions | None = None


@dataclass
class Observed:
    ca_cert: str | None = None
    ca_key: str | None = None
    ca_previous: str | None = None
    caddyfile: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    bundle_file: str | None = None  # <folder>/ca.crt
    bundle_version: int | None = None  # tls_ca_bundle in the swarm; None: none, or no swarm here
    bundle_digest: str | None = None
    swarm: bool = False  # whether the swarm answered


@dataclass
class Change:
    kind: str  # ca | certificate | bundle | caddyfile
    action: str  # create | update
    name: str
    reason: str


@dataclass
class Plan:
    changes: list[Change]

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, kind: str) -> Change | None:
        return next((c for c in self.changes if c.kind == kind), None)

    def to_json(self) -> str:
        return json.dumps({"changes": [asdict(c) for c in self.changes]}, indent=2)


def split_pem(text: str | None) -> tuple[str | None, str | None]:
    """current.pem -> (certificate chain, private key); (None, None) when absent or without a key."""
    if not text:
        return None, None
    match = _KEY_START.search(text)
    if not match:
        return text, None
    return text[: match.start()], text[match.start():]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def repo_path(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def desired(site: Mapping[str, Any], repo_root: Path, options: caddyfile.CaddyOptions | None = None) -> Desired:
    tls = site["tls"]
    ca = tls.get("site_ca") or {}
    out = Desired(site, tls["certificates"], endpoints.proxied_hosts(site), proxy_dir(site),
                  int(ca.get("cert_days", 397)), int(ca.get("renew_days", 30)), int(ca.get("ca_days", 3650)),
                  options=options or caddyfile.stack_options(site))
    if out.source == "acme" and (tls.get("acme") or {}).get("ca_root"):
        out.files = {"acme_root": repo_path(repo_root, tls["acme"]["ca_root"])}
    if out.source == "files":
        files = tls.get("files") or {}
        if not files:
            raise UserError("tls.certificates is files but tls.files is missing in site.yml (run `bidsflux validate`)")
        out.files = {k: repo_path(repo_root, v) for k, v in files.items()}
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def observe(site: Mapping[str, Any], want: Desired, values: Mapping[str, str], client: Any | None) -> Observed:
    """`values`: the values file; `client`: docker-py, or None where no swarm is reachable."""
    obs = Observed(values.get(CA_CERT), values.get(CA_KEY), values.get(CA_PREVIOUS))
    obs.caddyfile = _read(want.folder / "Caddyfile")
    obs.cert_pem, obs.key_pem = split_pem(_read(want.folder / CERT_DIR / caddyfile.CERT_FILE))
    obs.bundle_file = _read(want.folder / BUNDLE_NAME)
    if client is not None:
        from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_SECRET, LABEL_STACK, LABEL_VERSION

        obs.swarm = True
        wanted = {LABEL_MANAGED: "true", LABEL_STACK: site["site"]["name"], LABEL_SECRET: BUNDLE_SECRET}
        for s in client.api.secrets(filters={"label": [f"{k}={v}" for k, v in wanted.items()]}):
            labels = s["Spec"].get("Labels") or {}
            version = int(labels.get(LABEL_VERSION, 0) or 0)
            if obs.bundle_version is None or version > obs.bundle_version:
                obs.bundle_version, obs.bundle_digest = version, labels.get(LABEL_DIGEST)
    return obs


def bundle_text(want: Desired, ca_cert: str | None, ca_previous: str | None) -> str:
    """What clients must trust: the site CA (and the one it replaced, while still valid), the
    site's own CA file, or the public roots."""
    if want.source == "site_ca":
        parts = [ca_cert or ""]
        if ca_previous and certs.read_info(ca_previous).days_left() > 0:
            parts.append(ca_previous)
        return "".join(parts)
    if want.source == "files" and "ca" in want.files:
        text = _read(want.files["ca"])
        if text is None:
            raise UserError(f"tls.files.ca: {want.files['ca']} does not exist")
        return text
    roots = public_roots()
    if want.source == "acme" and "acme_root" in want.files:
        text = _read(want.files["acme_root"])
        if text is None:
            raise UserError(f"tls.acme.ca_root: {want.files['acme_root']} does not exist")
        roots += "\n" + text
    return roots


def _certificate_problem(want: Desired, obs: Observed) -> str | None:
    """Why the certificate the proxy serves must be replaced; None when it is fine."""
    if obs.cert_pem is None or obs.key_pem is None:
        return "no certificate installed for the proxy yet"
    try:
        info = certs.read_info(obs.cert_pem)
        if not certs.key_matches(obs.cert_pem, obs.key_pem):
            return "the installed key does not belong to the installed certificate"
    except ValueError as exc:
        return f"the installed certificate cannot be read ({exc})"
    missing = [n for n in want.names if not certs.covers(info.names, n)]
    if missing:
        return f"the installed certificate does not cover {', '.join(missing)}"
    if want.source == "site_ca":
        if obs.ca_cert is None or not certs.signed_by(obs.cert_pem, obs.ca_cert):
            return "the installed certificate was not issued by the current site CA"
        if info.days_left() <= want.renew_days:
            return f"the installed certificate expires in {info.days_left():.0f} day(s) (renew within {want.renew_days})"
    return None


def render_caddyfile(want: Desired) -> str:
    assert want.options is not None
    return caddyfile.render(want.site, want.options)


def diff(want: Desired, obs: Observed, rotate: bool = False, rotate_ca: bool = False) -> Plan:
    """`rotate`: a new host certificate even when the current one is fine; `rotate_ca`: a new site CA too."""
    changes: list[Change] = []
    ca_cert = obs.ca_cert
    if want.source == "site_ca":
        if obs.ca_cert is None or obs.ca_key is None:
            changes.append(Change("ca", "create", CA_CERT, "no site CA yet"))
            ca_cert = None
        elif rotate_ca:
            changes.append(Change("ca", "update", CA_CERT, "rotation requested: a new site CA (clients trust both until the next one)"))
        elif certs.read_info(obs.ca_cert).days_left() <= want.renew_days:
            changes.append(Change("ca", "update", CA_CERT, "the site CA expires soon: run `bidsflux tls rotate --ca`"))
        why = "a new site CA" if ca_cert is None or rotate_ca else _certificate_problem(want, obs)
        if why is None and rotate:
            why = "rotation requested"
        if why:
            changes.append(Change("certificate", "create" if obs.cert_pem is None else "update", "proxy", why))
    elif want.source == "files":
        cert_text = _read(want.files["cert"])
        if cert_text is None:
            raise UserError(f"tls.files.cert: {want.files['cert']} does not exist on this host")
        if obs.cert_pem is None or obs.cert_pem.strip() != cert_text.strip():
            changes.append(Change("certificate", "create" if obs.cert_pem is None else "update", "proxy",
                                  f"install {want.files['cert']} (changed or not installed)"))
        else:
            key_text = _read(want.files["key"])
            if key_text is not None and (obs.key_pem or "").strip() != key_text.strip():
                changes.append(Change("certificate", "update", "proxy", f"install {want.files['key']} (changed)"))
    # The bundle and the Caddyfile follow from the above; when the CA or certificate changes
    # their final text is only known at apply, and they are planned as changes then.
    if not any(c.kind == "ca" for c in changes):
        text = bundle_text(want, ca_cert, obs.ca_previous)
        if obs.bundle_file != text:
            changes.append(Change("bundle", "update" if obs.bundle_file else "create", BUNDLE_NAME,
                                  "the CA bundle clients trust changed"))
        if obs.swarm and obs.bundle_digest != digest(text):
            changes.append(Change("bundle", "create", f"{BUNDLE_SECRET} v{(obs.bundle_version or 0) + 1}",
                                  "the tls_ca_bundle secret differs from the CA bundle (or does not exist)"))
    else:
        changes.append(Change("bundle", "update" if obs.bundle_file else "create", BUNDLE_NAME, "the CA bundle of the new site CA"))
        if obs.swarm:
            changes.append(Change("bundle", "create", f"{BUNDLE_SECRET} v{(obs.bundle_version or 0) + 1}",
                                  "the tls_ca_bundle secret of the new site CA"))
    if "acme_root" in want.files and _read(want.folder / caddyfile.ACME_ROOT) != _read(want.files["acme_root"]):
        changes.append(Change("caddyfile", "update", caddyfile.ACME_ROOT, "the internal ACME CA's root changed"))
    # The Caddyfile never names a certificate: a new one needs no reload (see caddyfile.py).
    if want.options is not None and obs.caddyfile != render_caddyfile(want):
        changes.append(Change("caddyfile", "update" if obs.caddyfile else "create", "Caddyfile",
                              "the proxy's routes, ports or certificate source changed (the proxy reloads)"))
    return Plan(changes)


def format_plan(plan: Plan) -> list[str]:
    if plan.empty:
        return ["No changes. The proxy's certificates, configuration and trust match site.yml."]
    sign = {"create": "+", "update": "~"}
    lines = [f"{sign.get(c.action, '~')} {c.kind} {c.name} ({c.action}): {c.reason}" for c in plan.changes]
    lines.append(f"Plan: {len(plan.changes)} change(s).")
    return lines
