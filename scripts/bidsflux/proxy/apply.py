"""Applying a TLS plan: the site CA into the values file, the CA bundle (file and versioned
swarm secret, services that mount it moved), the host certificate (one file the running proxy
reads at each handshake: no reload, no dropped request), and the Caddyfile with a reload of the
running proxy when routes change.

Order matters for a new CA: clients first trust old and new CA, only then does the proxy serve
a certificate of the new one. A reload Caddy refuses leaves the old Caddyfile in place."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from bidsflux.diagnostics import UserError
from bidsflux.proxy import certs
from bidsflux.proxy.caddyfile import ACME_ROOT, CERT_FILE, CONTAINER_DIR, reload_on_new_certificate
from bidsflux.proxy.plan import (
    BUNDLE_SECRET,
    CA_CERT,
    CA_KEY,
    CA_PREVIOUS,
    CERT_DIR,
    LABEL_DIGEST,
    Desired,
    Observed,
    Plan,
    bundle_text,
    digest,
    render_caddyfile,
)
from bidsflux.proxy.trust import BUNDLE_NAME

# Reload the running proxy; raises UserError when Caddy refuses, returns a note otherwise.
Reloader = Callable[[], str]


def write_file(path: Path, text: str, mode: int) -> None:
    """Atomic: Caddy (or a client) never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swarm_reloader(client: Any, stack: str) -> Reloader:
    """`caddy reload` inside the proxy's task container on this node (Caddy's admin endpoint
    listens on localhost inside the container only)."""

    def reload() -> str:
        running = client.containers.list(filters={"label": f"com.docker.swarm.service.name={stack}_proxy",
                                                  "status": "running"})
        if not running:
            return "the proxy is not running on this node; it reads the new files when it starts"
        for container in running:
            code, output = container.exec_run(["caddy", "reload", "--config", f"{CONTAINER_DIR}/Caddyfile",
                                               "--adapter", "caddyfile"])
            if code != 0:
                text = (output or b"").decode(errors="replace").strip().splitlines()
                raise UserError(f"the proxy refused the new configuration: {(text or ['no output'])[-1][:400]}")
        return f"reloaded the proxy in place ({len(running)} task(s))"

    return reload


def _bundle_users(client: Any, stack: str, current: str) -> list[str]:
    """Services whose spec mounts a tls_ca_bundle version other than `current`."""
    prefix = f"{stack}_{BUNDLE_SECRET}_v"
    out = []
    for svc in client.api.services():
        refs = ((svc["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Secrets") or []
        if any(r.get("SecretName", "").startswith(prefix) and r["SecretName"] != current for r in refs):
            out.append(svc["Spec"]["Name"])
    return sorted(out)


def publish_bundle(client: Any, stack: str, text: str, version: int, console: Console, timeout: float) -> list[str]:
    """tls_ca_bundle v<version> with the text's digest as a label; services move to it; old
    versions nothing uses any more are removed."""
    from docker.errors import APIError

    from bidsflux.site.render import versioned_secret_name
    from bidsflux.swarm.engine import wait_for_services
    from bidsflux.swarm.rotation import move_service
    from bidsflux.swarm.secretstore import our_secrets, secret_labels

    name = versioned_secret_name(stack, BUNDLE_SECRET, version)
    try:
        secret = client.secrets.create(name=name, data=text.encode(),
                                       labels={**secret_labels(stack, BUNDLE_SECRET, version), LABEL_DIGEST: digest(text)})
        secret_id = secret.id
    except APIError as exc:
        if exc.status_code != 409:
            raise UserError(f"cannot create swarm secret {name}: {exc.explanation or exc}") from None
        secret_id = client.secrets.get(name).id
    done = [f"created secret {name}"]
    moving = _bundle_users(client, stack, name)
    old = {v.name for v in our_secrets(client, stack) if v.logical == BUNDLE_SECRET and v.name != name}
    started = time.time()
    for service in moving:
        move_service(client, service, old, name, secret_id)
        console.print(f"step: moving {service} to {name}", highlight=False, markup=False)
    failed = [o for o in wait_for_services(client, moving, started, timeout) if not o.ok]
    if failed:
        raise UserError(f"{', '.join(o.name for o in failed)} did not converge on {name} ({failed[0].state}: "
                        f"{failed[0].detail}); the old bundle is kept. Fix and run `bidsflux tls apply` again")
    if moving:
        done.append(f"moved {', '.join(moving)} to {name}")
    for v in our_secrets(client, stack, include_previous=False):
        if v.logical == BUNDLE_SECRET and v.name != name and not v.used_by:
            try:
                client.api.remove_secret(v.id)
                done.append(f"removed {v.name}")
            except APIError:
                pass  # still referenced by a rollback spec: `bidsflux secrets gc` later
    return done


def apply(want: Desired, obs: Observed, plan: Plan, values_file: str, client: Any | None, reloader: Reloader | None,
          console: Console, timeout: float = 300) -> list[str]:
    """Perform `plan`; returns what was done, one line each. Re-running converges."""
    from bidsflux.swarm.secretstore import write_values_file

    done: list[str] = []
    if plan.empty:
        return done
    stack = want.site["site"]["name"]
    ca_cert, ca_key, previous = obs.ca_cert, obs.ca_key, obs.ca_previous
    ca = plan.of("ca")
    if ca is not None and want.source == "site_ca":
        name = f"{want.site['site']['name']} site CA {time.strftime('%Y-%m-%d')}"
        new_cert, new_key = certs.make_ca(name, want.ca_days)
        updates = {CA_CERT: new_cert, CA_KEY: new_key}
        if ca_cert is not None:
            previous = ca_cert
            updates[CA_PREVIOUS] = ca_cert
        # The values file first: a CA key must never exist only in memory.
        write_values_file(values_file, updates)
        ca_cert, ca_key = new_cert, new_key
        done.append(f"{'created' if ca.action == 'create' else 'replaced'} the site CA (kept in {values_file})")

    bundle = bundle_text(want, ca_cert, previous)
    if any(c.kind == "bundle" for c in plan.changes):
        write_file(want.folder / BUNDLE_NAME, bundle, 0o644)
        done.append(f"wrote the CA bundle {want.folder / BUNDLE_NAME}")
        if client is not None and obs.bundle_digest != digest(bundle):
            done += publish_bundle(client, stack, bundle, (obs.bundle_version or 0) + 1, console, timeout)

    if plan.of("certificate") is not None:
        if want.source == "site_ca":
            assert ca_cert is not None and ca_key is not None
            chain, key = certs.issue(ca_cert, ca_key, want.names, want.cert_days)
        else:
            chain = want.files["cert"].read_text(encoding="utf-8")
            key_path = want.files["key"]
            try:
                key = key_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UserError(f"tls.files.key: cannot read {key_path}: {exc.strerror or exc}") from None
            try:
                if not certs.key_matches(chain, key):
                    raise UserError(f"tls.files.key {key_path} does not belong to the certificate {want.files['cert']}")
            except ValueError as exc:
                raise UserError(f"tls.files: {exc}") from None
        info = certs.read_info(chain)
        # One atomic rename: the next TLS handshake gets the new certificate (caddyfile.py).
        write_file(want.folder / CERT_DIR / CERT_FILE, chain.rstrip("\n") + "\n" + key, 0o600)
        done.append(f"installed the proxy certificate (serial {info.serial:x}) for {', '.join(info.names)} "
                    f"(valid until {info.not_after:%Y-%m-%d}); served from the next connection on")

    if plan.of("caddyfile") is not None or (plan.of("certificate") is not None and reload_on_new_certificate(want.site)):
        path = want.folder / "Caddyfile"
        old_text = obs.caddyfile
        if "acme_root" in want.files:
            write_file(want.folder / ACME_ROOT, want.files["acme_root"].read_text(encoding="utf-8"), 0o644)
        write_file(path, render_caddyfile(want), 0o644)
        done.append(f"wrote {path}")
        if reloader is not None:
            try:
                done.append(reloader())
            except UserError:
                # Caddy keeps serving the old configuration: keep the files that go with it.
                if old_text is not None:
                    write_file(path, old_text, 0o644)
                raise
    return done


def run(site: Mapping[str, Any], repo_root: Path, console: Console, client: Any | None, reloader: Reloader | None,
        dry_run: bool = False, rotate: bool = False, rotate_ca: bool = False, timeout: float = 300,
        options: Any | None = None) -> tuple[Plan, list[str]]:
    """desired -> observe -> plan -> (apply): what `bidsflux tls plan|apply|rotate` and bootstrap call."""
    from bidsflux.proxy.plan import desired, diff, observe
    from bidsflux.swarm.secretstore import read_values_file

    values_file = site["secrets"]["file"]
    try:
        values = read_values_file(values_file)
    except PermissionError:
        raise UserError(f"{values_file} is not readable by this user: run on the manager as root") from None
    want = desired(site, repo_root, options)
    obs = observe(site, want, values, client)
    plan = diff(want, obs, rotate=rotate, rotate_ca=rotate_ca)
    if dry_run:
        return plan, []
    return plan, apply(want, obs, plan, values_file, client, reloader, console, timeout)
