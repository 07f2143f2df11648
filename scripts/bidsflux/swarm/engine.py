"""Acting on the engine: `docker stack deploy`, the overlay network, and waiting on services (node labels: nodes.py)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError, clip
from bidsflux.swarm.plan import NETWORK_LABEL, strip_digest
from bidsflux.swarm.secretstore import LABEL_MANAGED


def stack_deploy(compose_text: str, stack: str, workdir: Path | None = None) -> None:
    """`docker stack deploy --prune` with the rendered file (the docker CLI: docker-py has no stacks)."""
    import tempfile

    import sh

    if not re.search(r"^version:", compose_text, re.M):
        # Debian bookworm's docker CLI (docker.io 20.10, the one in the ops image) reads a stack
        # file without `version` as Compose 1.0 and refuses it; newer CLIs ignore the key.
        compose_text = 'version: "3.9"\n' + compose_text
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "bidsflux.stack.yml"
        path.write_text(compose_text, encoding="utf-8")
        logging.getLogger("bidsflux").info("running docker stack deploy --prune -c %s %s", path, stack)
        try:
            sh.docker("stack", "deploy", "--prune", "--resolve-image", "never", "--with-registry-auth",
                      "-c", str(path), stack, _err_to_out=True)
        except sh.ErrorReturnCode as exc:
            out = exc.stdout.decode(errors="replace").strip()
            raise UserError(f"docker stack deploy failed: {out[-1500:]}") from None
        except sh.CommandNotFound:
            raise UserError("the docker CLI is not installed; install docker.io (apt-get install docker.io)") from None


def ensure_network(client: Any, name: str, subnet: str, encrypted: bool = False) -> None:
    from docker.types import IPAMConfig, IPAMPool

    # swarm.network.encrypted: IPsec between nodes (`docker network create --opt encrypted`).
    client.networks.create(name, driver="overlay", attachable=True, scope="swarm",
                           options={"encrypted": ""} if encrypted else None,
                           ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)]),
                           labels={LABEL_MANAGED: "true", NETWORK_LABEL: name})


@dataclass
class ServiceOutcome:
    name: str
    ok: bool
    state: str
    detail: str = ""
    running_image: str = ""


def service_tasks(client: Any, service_id: str) -> list[dict[str, Any]]:
    return client.api.tasks(filters={"service": service_id})


def running_summary(client: Any, service_id: str) -> tuple[int, str]:
    """(tasks running now, images they run)."""
    tasks = [t for t in service_tasks(client, service_id) if (t.get("Status") or {}).get("State") == "running"
             and t.get("DesiredState") == "running"]
    images = sorted({strip_digest(t["Spec"]["ContainerSpec"]["Image"]) for t in tasks})
    return len(tasks), ", ".join(images)


def last_task_error(client: Any, service_id: str) -> str:
    tasks = sorted(service_tasks(client, service_id), key=lambda t: t.get("UpdatedAt", ""), reverse=True)
    for t in tasks:
        st = t.get("Status") or {}
        if st.get("Err"):
            return f"{st.get('State')}: {st['Err']}"
    for t in tasks:
        st = t.get("Status") or {}
        if st.get("State") in ("failed", "rejected", "shutdown") and st.get("Message"):
            return f"{st.get('State')}: {st['Message']}"
    return ""


def service_converged(client: Any, service_id: str) -> tuple[bool, str]:
    """All desired replicas running on the current spec (a task with a healthcheck only counts as
    running once healthy: swarm keeps it in 'starting' until then)."""
    svc = client.api.inspect_service(service_id)
    spec = svc["Spec"]
    want = ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
    version = svc["Version"]["Index"]
    tasks = [t for t in service_tasks(client, service_id) if t.get("DesiredState") == "running"]
    current = [t for t in tasks if (t.get("Status") or {}).get("State") == "running"
               and strip_digest(t["Spec"]["ContainerSpec"]["Image"]) == strip_digest(spec["TaskTemplate"]["ContainerSpec"]["Image"])
               and t["Spec"]["ContainerSpec"].get("Secrets") == spec["TaskTemplate"]["ContainerSpec"].get("Secrets")]
    states = sorted({(t.get("Status") or {}).get("State", "?") for t in tasks})
    del version
    return len(current) >= want and len(tasks) == want, f"{len(current)}/{want} running" + (
        f" ({', '.join(states)})" if states and states != ["running"] else "")


def wait_for_services(
    client: Any,
    names: list[str],
    started: float,
    timeout: float,
    on_progress: Callable[[str, str, float], None] | None = None,
) -> list[ServiceOutcome]:
    """Wait until each service's update completes (or converges when it has no update), or fails.

    paused / rollback_* update states are failures; the outcome names the task error and what
    runs now."""
    pending = {n: n for n in names}
    outcomes: dict[str, ServiceOutcome] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for name in list(pending):
            try:
                svc = client.api.inspect_service(name)
            except Exception as exc:  # noqa: BLE001 - a removed service is reported, not raised
                outcomes[name] = ServiceOutcome(name, False, "missing", clip(str(exc), 200))
                pending.pop(name)
                continue
            us = svc.get("UpdateStatus") or {}
            state = us.get("State", "")
            fresh = bool(us) and parse_timestamp(us.get("StartedAt", "")) >= started - 2
            ok, progress = service_converged(client, svc["ID"])
            if fresh and state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
                if state == "rollback_started":
                    if on_progress:
                        on_progress(name, f"rolling back: {us.get('Message', '')}", time.monotonic())
                    continue
                n, images = running_summary(client, svc["ID"])
                outcomes[name] = ServiceOutcome(
                    name, False, state, f"{us.get('Message', '')}; task error: {last_task_error(client, svc['ID']) or 'none recorded'}",
                    f"{n} task(s) running {images or 'nothing'}")
                pending.pop(name)
                continue
            done = ok and (not fresh or state in ("completed", ""))
            if done:
                n, images = running_summary(client, svc["ID"])
                outcomes[name] = ServiceOutcome(name, True, "converged", progress, images)
                pending.pop(name)
            elif on_progress:
                on_progress(name, (f"update {state}, " if fresh and state else "") + progress, time.monotonic())
        if not pending:
            break
        if time.monotonic() > deadline:
            for name in pending:
                svc = client.api.inspect_service(name)
                n, images = running_summary(client, svc["ID"])
                outcomes[name] = ServiceOutcome(name, False, "timeout", f"not converged after {timeout:.0f}s; last task "
                                                f"error: {last_task_error(client, svc['ID']) or 'none recorded'}",
                                                f"{n} task(s) running {images or 'nothing'}")
            break
        time.sleep(0.5)
    return [outcomes[n] for n in names]


def parse_timestamp(text: str) -> float:
    """Docker's RFC 3339 timestamps (nanoseconds) as epoch seconds."""
    from datetime import datetime

    if not text:
        return 0.0
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not m:
        return 0.0
    base = datetime.fromisoformat(m.group(1) + (m.group(3).replace("Z", "+00:00")))
    return base.timestamp() + float("0" + (m.group(2) or ".0"))
