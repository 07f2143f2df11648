"""Swarm configs made from files in stack/ (x-bidsflux-configs): create the content-hashed
versions a deploy needs, and remove the old versions no service uses any more.

Configs are immutable and `docker stack deploy --prune` removes only services, so each version is
a config of its own (its name carries a hash of its content) and old ones are collected here."""

from __future__ import annotations

from typing import Any

from bidsflux.site.render import RenderedStack
from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_STACK

LABEL_CONFIG = "io.bidsflux.config"


def create_configs(client: Any, rendered: RenderedStack, names: list[str]) -> list[str]:
    """Create the rendered configs named in `names` (a plan's config creations); what was done."""
    from docker.errors import APIError

    by_name = {c.name: c for c in rendered.configs.values()}
    done = []
    for name in names:
        config = by_name[name]
        labels = {LABEL_MANAGED: "true", LABEL_STACK: rendered.stack_name, LABEL_CONFIG: config.logical}
        try:
            client.configs.create(name=name, data=config.data, labels=labels)
        except APIError as exc:
            if exc.status_code != 409:
                raise
            done.append(f"config {name} was made meanwhile (same name, same content)")
            continue
        done.append(f"created config {name} ({len(config.data)} bytes)")
    return done


def stale_configs(client: Any, rendered: RenderedStack) -> list[tuple[str, str]]:
    """(id, name) of this stack's configs that are not the current version and that no service
    references, in its current spec or the previous one a rollback would return to."""
    api = client.api
    used = set()
    for svc in api.services():
        for key in ("Spec", "PreviousSpec"):
            refs = (((svc.get(key) or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Configs") or []
            used.update(r.get("ConfigID") for r in refs)
    current = {c.name for c in rendered.configs.values()}
    out = []
    for c in api.configs(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={rendered.stack_name}"]}):
        name = c["Spec"]["Name"]
        if LABEL_CONFIG in (c["Spec"].get("Labels") or {}) and name not in current and c["ID"] not in used:
            out.append((c["ID"], name))
    return sorted(out, key=lambda t: t[1])


def remove_stale_configs(client: Any, rendered: RenderedStack) -> list[str]:
    from docker.errors import APIError, NotFound

    done = []
    for config_id, name in stale_configs(client, rendered):
        try:
            client.api.remove_config(config_id)
            done.append(f"removed old config {name}")
        except NotFound:
            pass
        except APIError as exc:  # a service took it up meanwhile: the next deploy tries again
            done.append(f"kept old config {name}: {exc.explanation or exc}")
    return done
