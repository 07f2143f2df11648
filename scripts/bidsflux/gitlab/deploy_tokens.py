"""Project deploy tokens of gitlab.yml (the swarm's registry pull credential): observe, diff, create/renew, and the login they give.

GitLab shows a deploy token's value only in the answer to `POST /projects/:id/deploy_tokens`
(lib/api/deploy_tokens.rb presents DeployTokenWithToken there, DeployToken elsewhere), so the value
goes to the values file before anything else happens; a token whose value could not be stored is
deleted again. Renewal is create new, store, then delete the old (deploy tokens have no rotate API)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.gitlab.client import scrub
from bidsflux.gitlab.reconcile import UNREADABLE, ApplyContext, Change, Observed, Plan, readonly_guard
from bidsflux.gitlab.spec import DeployTokenSpec, Desired, utc_today
from bidsflux.gitlab.users import days_left

KINDS = ("deploy_token",)


def label(t: DeployTokenSpec) -> str:
    return f"{t.project}:{t.key}"


def specs(want: Desired) -> list[DeployTokenSpec]:
    return [t for p in want.projects for t in p.deploy_tokens]


def observe(gl: Any, want: Desired, obs: Observed) -> None:
    for t in specs(want):
        handle = obs.handles.get(t.project)
        if handle is None:
            continue  # the project is created by this apply: its tokens are too
        listed = readonly_guard(obs, f"deploy tokens of {t.project}",
                                lambda h=handle: h.deploytokens.list(active=True, get_all=True))
        if listed is not UNREADABLE:
            obs.deploy_tokens[label(t)] = [x.asdict() for x in listed if x.name == t.key]


def diff(want: Desired, obs: Observed, plan: Plan) -> None:
    add = plan.changes.append
    for t in specs(want):
        name = label(t)
        project_missing = obs.projects.get(t.project) is None
        if not project_missing and name not in obs.deploy_tokens:
            continue  # not readable with this token (noted)
        live = obs.deploy_tokens.get(name) or []
        current = max(live, key=lambda x: x.get("expires_at") or "9999") if live else None
        scopes = {"scopes": {"from": None, "to": sorted(t.scopes)}}
        if current is None:
            add(Change("create", "deploy_token", name, scopes, reason=f"value stored as {t.secret}"))
        elif sorted(current.get("scopes") or []) != sorted(t.scopes):
            add(Change("create", "deploy_token", name, {"scopes": {"from": sorted(current.get("scopes") or []),
                                                                  "to": sorted(t.scopes)}},
                       reason="scopes changed: a new token replaces the old one"))
        elif t.username and current.get("username") != t.username:
            add(Change("create", "deploy_token", name, {"username": {"from": current.get("username"), "to": t.username}},
                       reason="user name changed: a new token replaces the old one"))
        elif want.values_file_keys is not None and not {t.secret, f"{t.secret}_username"} <= want.values_file_keys:
            add(Change("rotate", "deploy_token", name, reason=f"its value is not in the values file ({t.secret})"))
        elif days_left(current.get("expires_at")) <= want.token_warn_days:
            add(Change("rotate", "deploy_token", name, {"expires_at": {"from": current.get("expires_at"), "to": None}},
                       reason=f"expires within {want.token_warn_days} days"))


def apply(gl: Any, c: Change, ctx: ApplyContext) -> None:
    t = next(x for x in specs(ctx.want) if label(x) == c.name)
    if ctx.store is None or not ctx.store.values_file:
        raise UserError(f"deploy token {c.name}: no values file to store its value in (site.yml secrets.file, writable "
                        "here); nothing was created")
    ctx.result.stored[c.name] = renew(gl, t, ctx.store.values_file)


def renew(gl: Any, t: DeployTokenSpec, values_file: str) -> list[str]:
    """Create a deploy token, store its value (values file), then delete the older tokens of that
    name. If storing fails, the new token is deleted again and the old ones keep working."""
    from bidsflux.swarm import secretstore

    project = gl.projects.get(t.project)
    old = [x for x in project.deploytokens.list(get_all=True) if x.name == t.key]
    data: dict[str, Any] = {"name": t.key, "scopes": t.scopes}
    if t.username:
        data["username"] = t.username
    if t.expires_in_days:
        data["expires_at"] = (utc_today() + dt.timedelta(days=t.expires_in_days)).isoformat()
    created = project.deploytokens.create(data)
    value, token_id, username = str(created.token), int(created.id), str(created.username)
    try:
        secretstore.write_values_file(values_file, {t.secret: value, f"{t.secret}_username": username,
                                                    f"{t.secret}_id": str(token_id)})
    except BaseException as exc:
        try:
            project.deploytokens.delete(token_id)
        except Exception:  # noqa: BLE001 - report the storing failure, which matters more
            pass
        raise UserError(f"deploy token {label(t)} was created but could not be stored ({clip(scrub(str(exc), [value]), 200)}); "
                        "it was deleted again, fix the values file and re-run") from None
    for x in old:  # the older tokens stop working only now that the new value is stored
        project.deploytokens.delete(x.id)
    return [f"values file {values_file}"]


def pull_logins(gitlab_doc: Mapping[str, Any], site: Mapping[str, Any], images: list[str],
                values: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """registry -> (user, token) for images of the site's registry whose project has a deploy token
    with read_registry whose value (and user name) the values file holds."""
    from bidsflux.gitlab.spec import desired
    from bidsflux.images.registry import parse
    from bidsflux.site.endpoints import registry_address

    registry = registry_address(site)
    tokens = {t.project: t for t in specs(desired(gitlab_doc, site, {})) if "read_registry" in t.scopes}
    out: dict[str, tuple[str, str]] = {}
    for image in images:
        try:
            ref = parse(image)
        except Exception:  # noqa: BLE001 - not an image reference we can read: deploy as before
            continue
        if ref.registry != registry:
            continue
        t = next((tokens[p] for p in tokens if ref.repository == p or ref.repository.startswith(p + "/")), None)
        if t is not None and values.get(t.secret) and values.get(f"{t.secret}_username"):
            out[registry] = (values[f"{t.secret}_username"], values[t.secret])
    return out
