"""Secret rotation: new version, move every service to it, wait healthy, remove the old one.

Each step leaves the swarm consistent, so a run killed anywhere converges when run again:
- the value is written to the values file before the secret exists;
- a newest version that some user of the secret has not reached yet means an interrupted
  rotation, which is resumed instead of starting another one;
- an old version is removed only when no service spec (current or previous) references it,
  so no service ever points at a missing secret. Services move with their own update order
  (start-first services keep serving)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.text import Text

from bidsflux.diagnostics import UserError
from bidsflux.site.render import secret_catalog, secret_owner, secret_renewal
from bidsflux.swarm.deploy import SwarmContext, wait_with_progress
from bidsflux.swarm.secretstore import (
    SecretVersion,
    create_secret,
    generate_value,
    our_secrets,
    require_values_folder,
    write_values_file,
)


def choose(catalog: dict[str, dict[str, Any]], names: list[str], all_names: list[str] | None) -> tuple[list[str], list[str]]:
    """The secrets a rotation may make anew, and a line per secret `--all` leaves to its owner.

    Only generated secrets are rotated here. A registered runner config or a minted GitLab token
    would be replaced by a random value its user cannot work with, so naming one is refused with
    the command that renews it."""
    if all_names is not None:
        chosen = [n for n in all_names if secret_owner(catalog.get(n, {})) == "generated"]
        skipped = [f"skipped {n} ({secret_owner(catalog[n])}): renew it with `{secret_renewal(catalog[n])}`"
                   for n in all_names if n in catalog and n not in chosen]
        return chosen, skipped
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise UserError(f"unknown secret(s) {', '.join(unknown)}; known: {', '.join(sorted(catalog))}")
    foreign = [n for n in names if secret_owner(catalog[n]) != "generated"]
    if foreign:
        raise UserError("; ".join(f"{n} is {secret_owner(catalog[n])}, not generated: `secrets rotate` would replace it "
                                  f"with a random value; renew it with `{secret_renewal(catalog[n])}`" for n in foreign)
                        + "; nothing was changed")
    return list(names), []


@dataclass
class RotationResult:
    logical: str
    new_name: str
    services: list[str]
    removed: list[str]
    ok: bool


def _step(console: Console, text: str) -> None:
    # One line per step, flushed: operators (and tests) see exactly how far a run got.
    console.print(f"step: {text}", highlight=False, markup=False)
    console.file.flush()


def _users(client: Any, names: set[str]) -> dict[str, list[str]]:
    """Service names whose current spec references any of the secret names."""
    out: dict[str, list[str]] = {}
    for svc in client.api.services():
        refs = ((svc["Spec"].get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Secrets") or []
        for r in refs:
            if r.get("SecretName") in names:
                out.setdefault(svc["Spec"]["Name"], []).append(r["SecretName"])
    return out


def move_service(client: Any, service: str, old_names: set[str], new_name: str, new_id: str) -> bool:
    """Point the service's references to old versions at the new one; False when nothing to do."""
    svc = client.api.inspect_service(service)
    spec = svc["Spec"]
    tt = copy.deepcopy(spec["TaskTemplate"])
    changed = False
    for ref in tt.get("ContainerSpec", {}).get("Secrets") or []:
        if ref.get("SecretName") in old_names:
            ref["SecretName"], ref["SecretID"] = new_name, new_id
            changed = True
    if not changed:
        return False
    # The whole spec is passed back as it is, so nothing but the secret reference changes.
    client.api.update_service(
        svc["ID"], svc["Version"]["Index"], task_template=tt, name=spec["Name"], labels=spec.get("Labels") or {},
        mode=spec.get("Mode"), update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"), fetch_current_spec=False)
    return True


def rotate_one(ctx: SwarmContext, logical: str, console: Console, timeout: float) -> RotationResult:
    catalog = secret_catalog(ctx.template.data)
    if logical not in catalog:
        raise UserError(f"unknown secret '{logical}'; known: {', '.join(sorted(catalog))}")
    client = ctx.client
    versions = [v for v in our_secrets(client, ctx.stack) if v.logical == logical]
    all_names = {v.name for v in versions}
    users = _users(client, all_names)
    newest: SecretVersion | None = max(versions, key=lambda v: v.version) if versions else None
    behind = sorted(s for s, refs in users.items() if newest is not None and any(r != newest.name for r in refs))
    if newest is not None and behind:
        _step(console, f"resuming the interrupted rotation of {logical} to {newest.name}")
        target = newest
    else:
        version = (newest.version if newest else 0) + 1
        value = generate_value(str(catalog[logical].get("generate", "password")))
        require_values_folder(ctx.site["secrets"]["file"])
        write_values_file(ctx.site["secrets"]["file"], {logical: value})
        secret_id = create_secret(client, ctx.stack, logical, version, value)
        target = SecretVersion(f"{ctx.stack}_{logical}_v{version}", secret_id, logical, version, "", [])
        _step(console, f"created {target.name}")
    old_names = all_names - {target.name}
    moving = sorted(s for s, refs in _users(client, old_names).items() if refs)
    started = time.time()
    for service in moving:
        move_service(client, service, old_names, target.name, target.id)
        _step(console, f"updating service {service} to {target.name}")
    outcomes = wait_with_progress(ctx, moving, started, timeout, console)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        console.print(Text.assemble((o.name, "red"), f": {o.state}. {o.detail}. Running now: {o.running_image or 'nothing'}"))
    if failed:
        console.print(f"old versions of {logical} are kept because a service did not move to {target.name}")
        return RotationResult(logical, target.name, moving, [], False)
    for service in moving:
        _step(console, f"service {service} converged on {target.name}")
    removed = []
    # The moved services' previous spec still names the old version; rolling a rotation back to
    # a retired secret is never wanted, so only current specs count here (gc is stricter).
    still_used = {v.name for v in our_secrets(client, ctx.stack, include_previous=False) if v.used_by}
    for v in sorted(versions, key=lambda v: v.version):
        if v.name != target.name and v.name not in still_used and v.version < target.version:
            client.api.remove_secret(v.id)
            removed.append(v.name)
            _step(console, f"removed {v.name}")
    note = str(catalog[logical].get("rotation", "")).strip()
    if note:
        console.print(f"note for {logical}: {note}", highlight=False, markup=False)
    return RotationResult(logical, target.name, moving, removed, True)


def rotate(ctx: SwarmContext, names: list[str], console: Console, timeout: float) -> int:
    results = [rotate_one(ctx, n, console, timeout) for n in names]
    for r in results:
        console.print(f"{r.logical}: {'rotated to' if r.ok else 'NOT rotated (see above):'} {r.new_name}; "
                      f"services moved: {', '.join(r.services) or 'none'}; removed: {', '.join(r.removed) or 'none'}",
                      highlight=False, markup=False)
    return 0 if all(r.ok for r in results) else 1
