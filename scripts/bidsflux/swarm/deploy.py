"""Applying a swarm plan: prerequisites, `docker stack deploy`, waiting on updates, and the
hand-off to a detached swarm job when the deploy would restart what runs the current CI job."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bidsflux.diagnostics import UserError
from bidsflux.site.render import RenderedStack, secret_catalog
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document
from bidsflux.swarm.configs import create_configs, remove_stale_configs
from bidsflux.swarm.engine import (
    ServiceOutcome,
    ensure_network,
    stack_deploy,
    wait_for_services,
)
from bidsflux.swarm.nodes import (
    LabelChange,
    apply_label_changes,
    observe_nodes,
    roles_without_node,
    swarm_services_of_role,
    wait_for_placement,
)
from bidsflux.swarm.plan import DesiredState, ObservedState, Plan, desired, diff, format_plan, observe
from bidsflux.swarm.secretstore import create_secret, docker_client, generate_value, write_values_file

HANDOFF_LABEL = "io.bidsflux.handoff"
HANDOFF_FILE = "/handoff/bidsflux.stack.yml"
HANDOFF_DOCKER_CONFIG = "/run/bidsflux-docker"  # the job's DOCKER_CONFIG when it carries the pull login


@dataclass
class SwarmContext:
    repo: Repository
    site: dict[str, Any]
    template: Document
    rendered: RenderedStack
    client: Any

    @property
    def stack(self) -> str:
        return self.rendered.stack_name

    @property
    def network_name(self) -> str:
        return self.site["swarm"]["network"]["name"]

    def desired(self) -> DesiredState:
        return desired(self.rendered, self.site)

    def observe(self) -> ObservedState:
        return observe(self.client, self.stack, self.network_name)

    def plan(self) -> Plan:
        return diff(self.desired(), self.observe())

    def rerender(self) -> None:
        """Render again with the secret versions live now (after secrets were created or rotated)."""
        from bidsflux.site.render import render_stack
        from bidsflux.swarm.stackfile import secret_versions

        self.rendered = render_stack(self.site, self.template, secret_versions(self.stack, "live"))


def load_context(site: str | None, root: str | None, versions: str = "live") -> SwarmContext:
    """Site, template, engine and the rendered stack; `versions` says where secret versions come
    from ("live": the swarm must answer; "auto": version 1 when there is no swarm yet)."""
    from bidsflux.site.render import render_stack
    from bidsflux.site.repository import open_repository
    from bidsflux.swarm.stackfile import secret_versions
    from bidsflux.validation import load_valid

    repo = open_repository(site, root)
    site_doc, template = load_valid(repo)
    client = docker_client()
    rendered = render_stack(site_doc.data, template, secret_versions(site_doc.data["site"]["name"], versions))
    return SwarmContext(repo, site_doc.data, template, rendered, client)


# ---------------------------------------------------------------- prerequisites


def apply_prerequisites(ctx: SwarmContext, plan: Plan, console: Console) -> list[str]:
    """Network, node labels, missing secrets and configs: what `docker stack deploy` cannot create."""
    done: list[str] = []
    for c in plan.of("network", "update"):
        differences = ", ".join(f"{k} is {v['live']}, site.yml says {v['desired']}" for k, v in c.fields.items())
        raise UserError(f"network {c.name}: {differences}; {c.note}")
    for c in plan.of("network", "create"):
        net = ctx.site["swarm"]["network"]
        ensure_network(ctx.client, c.name, net["subnet"], bool(net.get("encrypted", False)))
        done.append(f"created attachable{' encrypted' if net.get('encrypted') else ''} overlay network {c.name} ({net['subnet']})")
    labels = plan.of("node_label")
    if labels:
        if any(c.name.startswith("?") for c in labels):
            raise UserError("; ".join(c.note for c in labels if c.note))
        done += apply_label_changes(ctx.client, label_changes_of(plan))
    missing = plan.of("secret", "create")
    if missing:
        catalog = secret_catalog(ctx.template.data)
        by_name = {v: k for k, v in ctx.rendered.secrets.items()}
        values = {}
        for c in missing:
            logical = by_name[c.name]
            values[logical] = generate_value(str(catalog[logical].get("generate", "password")))
        # The values file first: a value must never exist only inside the swarm.
        write_values_file(ctx.site["secrets"]["file"], values)
        for c in missing:
            logical = by_name[c.name]
            version = int(c.name.rsplit("_v", 1)[1])
            create_secret(ctx.client, ctx.stack, logical, version, values[logical])
            done.append(f"created secret {c.name}")
        done.append(f"wrote {len(values)} new value(s) to {ctx.site['secrets']['file']} (0600)")
    done += create_configs(ctx.client, ctx.rendered, [c.name for c in plan.of("config", "create")])
    return done


def label_changes_of(plan: Plan) -> list[LabelChange]:
    out = []
    for c in plan.of("node_label"):
        host, label = c.name.split(": ", 1)
        role = label.split("=", 1)[0].removeprefix("bidsflux.role.")
        out.append(LabelChange(host, role, c.action, []))
    return out


def moved_services(ctx: SwarmContext, plan: Plan) -> dict[str, str]:
    """Full service name -> role, for services whose role's labels this plan changes."""
    roles = {lc.role for lc in label_changes_of(plan)}
    return {f"{ctx.stack}_{s}": role for role in sorted(roles) for s in swarm_services_of_role(ctx.site, role)
            if f"{ctx.stack}_{s}" in ctx.desired().services}


def services_without_node(ctx: SwarmContext, console: Console) -> set[str]:
    """Services no usable node can take now (a role on a node that has not joined or is down):
    deploy creates them, but waiting for them would only time out."""
    out = set()
    for role, services in roles_without_node(ctx.site, observe_nodes(ctx.client.api.nodes())).items():
        names = [f"{ctx.stack}_{s}" for s in services]
        out.update(names)
        console.print(f"[yellow]warning[/]: no ready node carries {role} yet: {', '.join(names)} start when one does "
                      "(join the node named for it under nodes in site.yml, then deploy again)")
    return out


# ---------------------------------------------------------------- registry credentials


@contextmanager
def pull_login(ctx: SwarmContext, console: Console) -> Iterator[str | None]:
    """The Docker CLI logged in to the site registry with gitlab.yml's read_registry deploy token
    (a private temporary DOCKER_CONFIG, removed after; ~/.docker is never written) when the stack
    uses an image from it and the values file holds the token, so `--with-registry-auth` gives
    the swarm a credential that outlives the deploy (rescheduled tasks pull with it). Otherwise
    the deploy runs as before. Yields which credential it handed over (registry, user and token id:
    no secret), or None."""
    import yaml

    from bidsflux.gitlab.deploy_tokens import pull_logins
    from bidsflux.images.dayzero import registry_login
    from bidsflux.site.yamlsource import load
    from bidsflux.swarm.secretstore import read_values_file

    logins: dict[str, tuple[str, str]] = {}
    try:
        images = [str(s.get("image")) for s in (yaml.safe_load(ctx.rendered.to_yaml()).get("services") or {}).values()
                  if isinstance(s, dict) and s.get("image")]
        values = read_values_file(ctx.site["secrets"]["file"])
        gitlab_doc = load(ctx.repo.gitlab_file, ctx.repo.root).data or {}
        logins = pull_logins(gitlab_doc, ctx.site, images, values)
    except (OSError, KeyError, AttributeError, UserError):
        logins = {}  # no values file here, or no gitlab.yml: deploy as before
    if not logins:
        yield None
        return
    registry, (user, token) = next(iter(logins.items()))
    token_id = next((values[k] for k in values if k.endswith("_id") and values.get(k[:-3]) == token), "")
    console.print(f"logged in to {registry} as {user} (deploy token) for this deploy", highlight=False, markup=False)
    with registry_login(registry, user, token):
        yield f"{registry} {user} {token_id}".strip()


def _credential_marker(ctx: SwarmContext) -> Any:
    from pathlib import Path

    return Path(ctx.site["paths"]["state_dir"]["path"]) / f"registry-credential.{ctx.stack}"


def remember_credential(ctx: SwarmContext, credential: str | None) -> None:
    """Which pull credential the stack's services hold since this deploy (no secret: registry,
    user name and token id), so that a renewed deploy token is handed over by the next deploy."""
    if credential is None:
        return
    try:
        _credential_marker(ctx).write_text(credential + "\n")
    except (OSError, KeyError, TypeError):
        pass  # no state folder here: the next deploy hands the credential over again


def refresh_credential(ctx: SwarmContext, console: Console) -> bool:
    """Nothing changed, but the deploy token was renewed since the services got theirs (the old one
    is deleted in GitLab, so a task rescheduled on a node without the image could not pull it): a
    `docker stack deploy --with-registry-auth` of the unchanged stack hands the new credential to
    every service; the swarm restarts no task for it. True when it did so."""
    try:
        held = _credential_marker(ctx).read_text().strip()
    except (OSError, KeyError, TypeError):
        held = None
    with pull_login(ctx, Console(quiet=True)) as credential:
        if credential is None or credential == held:
            return False
        console.print(f"No changes, but the registry credential changed ({credential}): "
                      f"docker stack deploy --with-registry-auth {ctx.stack} hands it to the services; no task restarts",
                      highlight=False, markup=False)
        stack_deploy(ctx.rendered.to_yaml(), ctx.stack)
    remember_credential(ctx, credential)
    console.print("deploy finished")
    return True


# ---------------------------------------------------------------- waiting with progress


def wait_with_progress(ctx: SwarmContext, names: list[str], started: float, timeout: float,
                       console: Console) -> list[ServiceOutcome]:
    if not names:
        return []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        tasks = {n: progress.add_task(f"{n}: waiting", total=None) for n in names}

        def on_progress(name: str, text: str, _now: float) -> None:
            progress.update(tasks[name], description=f"{name}: {text}")

        outcomes = wait_for_services(ctx.client, names, started, timeout, on_progress)
        for o in outcomes:
            progress.update(tasks[o.name], description=f"{o.name}: {o.state}", total=1, completed=1)
    return outcomes


def outcome_table(outcomes: list[ServiceOutcome]) -> Table:
    table = Table(title="services", show_lines=False)
    for col in ("service", "result", "running now", "detail"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        table.add_row(o.name, Text("ok", style="green") if o.ok else Text(o.state, style="red"), o.running_image, o.detail)
    return table


def deploy_services(ctx: SwarmContext, plan: Plan, timeout: float, console: Console) -> list[ServiceOutcome]:
    """`docker stack deploy` when services differ, then wait for them and for the services whose
    role moved to other nodes (the swarm reschedules those by itself once labels change)."""
    changed = [c.name for c in plan.service_changes if c.action in ("create", "update")]
    moved = moved_services(ctx, plan)
    if not plan.service_changes and not moved:
        return []
    started = time.time()
    unplaced = services_without_node(ctx, console)
    outcomes: list[ServiceOutcome] = []
    if plan.service_changes:
        console.print(f"docker stack deploy --prune {ctx.stack} ({len(changed)} service(s) to create or update)")
        with pull_login(ctx, console) as credential:
            stack_deploy(ctx.rendered.to_yaml(), ctx.stack)
        remember_credential(ctx, credential)
        outcomes = wait_with_progress(ctx, [n for n in changed if n not in unplaced], started, timeout, console)
    to_place = {n: r for n, r in moved.items() if n not in unplaced}
    if to_place:
        remaining = max(30.0, timeout - (time.time() - started))
        with console.status("waiting for services to run on their role's nodes") as status:
            placed = wait_for_placement(ctx.client, to_place, remaining,
                                        lambda name, text: status.update(f"{name}: {text}"))
        done = {o.name for o in outcomes}
        for name, (ok, text) in placed.items():
            if name in done and ok:
                continue
            outcomes = [o for o in outcomes if o.name != name]
            outcomes.append(ServiceOutcome(name, ok, "placed" if ok else "not placed", text))
    return outcomes


def report_failures(outcomes: list[ServiceOutcome], console: Console) -> bool:
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        console.print(Text.assemble(("FAILED", "red"), f" {o.name}: update {o.state}. {o.detail}. Running now: "
                                    f"{o.running_image or 'nothing'}"))
    return not failed


# ---------------------------------------------------------------- CI self-update hand-off


def ci_self_services(repo: Repository, stack: str, env: Mapping[str, str]) -> set[str]:
    """Services whose update would kill the CI job running this command: GitLab itself and the
    runner service executing the job (all runner services when the job's runner is unknown)."""
    if env.get("GITLAB_CI") != "true":
        return set()
    from bidsflux.site.yamlsource import load

    runners = (load(repo.runners_file, repo.root).data or {}).get("runners") or {}
    services = {r.get("service") for r in runners.values() if r.get("service")}
    desc = env.get("CI_RUNNER_DESCRIPTION", "")
    mine = {r.get("service") for r in runners.values() if desc and r.get("description") == desc and r.get("service")}
    return {f"{stack}_gitlab"} | {f"{stack}_{s}" for s in (mine or services)}


def handoff_image(env: Mapping[str, str]) -> str:
    image = env.get("BIDSFLUX_HANDOFF_IMAGE") or env.get("CI_JOB_IMAGE")
    if not image:
        raise UserError("this deploy restarts the service running the CI job and must run as a detached swarm job; "
                        "set BIDSFLUX_HANDOFF_IMAGE to an image with bidsflux and the docker CLI")
    return image


def docker_config() -> bytes:
    """The Docker CLI's config.json as the current login (pull_login) left it."""
    from pathlib import Path

    return (Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json").read_bytes()


def launch_handoff(ctx: SwarmContext, services: list[str], image: str, timeout: float,
                   registry_config: bytes | None = None) -> str:
    """A one-shot replicated-job service on a manager that runs the deploy from the rendered file;
    it keeps running when the CI job (and its runner) are restarted by that very deploy. With
    `registry_config` (a Docker config.json holding the pull login), the job's CLI reads it from a
    swarm secret removed with the job."""
    from docker.errors import APIError

    stamp = time.strftime("%Y%m%d%H%M%S") + f"{int(time.time() * 1000) % 1000:03d}"
    name = f"{ctx.stack}_handoff_{stamp}"
    labels = {HANDOFF_LABEL: ctx.stack, "io.bidsflux.managed": "true"}
    config = ctx.client.configs.create(name=name, data=ctx.rendered.to_yaml().encode(), labels=labels)
    try:
        secret = ctx.client.secrets.create(name=name, data=registry_config, labels=labels) if registry_config else None
        _create_job(ctx, name, image, services, timeout, labels, config.id, secret.id if secret else None)
    except APIError as exc:
        cleanup_handoff(ctx.client, name)
        raise UserError(f"cannot start the hand-off job with image {image}: {exc.explanation or exc}") from None
    return name


def _create_job(ctx: SwarmContext, name: str, image: str, services: list[str], timeout: float,
                labels: dict[str, str], config_id: str, secret_id: str | None = None) -> None:
    from docker.types import ConfigReference, RestartPolicy, SecretReference, ServiceMode

    login: dict[str, Any] = {}
    if secret_id:
        login = {"secrets": [SecretReference(secret_id, name, filename=f"{HANDOFF_DOCKER_CONFIG}/config.json", mode=0o400)],
                 "env": [f"DOCKER_CONFIG={HANDOFF_DOCKER_CONFIG}"]}
    ctx.client.services.create(
        image,
        command=["bidsflux", "swarm", "apply-rendered", "--stack", ctx.stack, "--file", HANDOFF_FILE,
                 "--timeout", str(int(timeout)), *[a for s in services for a in ("--service", s)]],
        name=name,
        labels=labels,
        mode=ServiceMode("replicated-job", concurrency=1),
        restart_policy=RestartPolicy(condition="none"),
        mounts=["/var/run/docker.sock:/var/run/docker.sock:rw"],
        constraints=["node.role == manager"],
        configs=[ConfigReference(config_id, name, filename=HANDOFF_FILE)],
        **login,
    )


def poll_handoff(ctx: SwarmContext, name: str, timeout: float, console: Console) -> int:
    """Wait for the job's task to finish; its logs are the deploy's report."""
    deadline = time.monotonic() + timeout
    state = "pending"
    with console.status(f"waiting for hand-off job {name}") as status:
        while time.monotonic() < deadline:
            tasks = ctx.client.api.tasks(filters={"service": name})
            states = [(t.get("Status") or {}).get("State") for t in tasks]
            state = states[0] if states else "pending"
            status.update(f"waiting for hand-off job {name}: {state}")
            if state in ("complete", "failed", "rejected", "shutdown"):
                break
            time.sleep(1)
    try:
        logs = b"".join(ctx.client.api.service_logs(name, stdout=True, stderr=True)).decode(errors="replace")
    except Exception:  # noqa: BLE001 - logs are a courtesy; the state is the result
        logs = ""
    if logs.strip():
        console.print(logs.rstrip())
    ok = state == "complete"
    console.print(f"hand-off job {name}: {state}" + ("" if ok else f" (see `docker service ps {name}`)"))
    if state in ("complete", "failed", "rejected"):
        cleanup_handoff(ctx.client, name)
    return 0 if ok else 1


def cleanup_handoff(client: Any, name: str) -> None:
    from docker.errors import NotFound

    for remove in (lambda: client.api.remove_service(name), lambda: client.configs.get(name).remove(),
                   lambda: client.secrets.get(name).remove()):
        try:
            remove()
        except NotFound:
            pass
    # A finished job's exited container is not collected with its service on every engine.
    for c in client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
        try:
            client.api.remove_container(c["Id"], force=True)
        except NotFound:
            pass


def cleanup_finished_handoffs(ctx: SwarmContext) -> None:
    for svc in ctx.client.api.services(filters={"label": f"{HANDOFF_LABEL}={ctx.stack}"}):
        states = {(t.get("Status") or {}).get("State") for t in ctx.client.api.tasks(filters={"service": svc["ID"]})}
        if states and states <= {"complete", "failed", "rejected", "shutdown"}:
            cleanup_handoff(ctx.client, svc["Spec"]["Name"])


# ---------------------------------------------------------------- the deploy command


def run_deploy(ctx: SwarmContext, console: Console, timeout: float, env: Mapping[str, str] | None = None,
               allow_handoff: bool = True) -> int:
    env = dict(os.environ if env is None else env)
    plan = ctx.plan()
    if plan.empty and refresh_credential(ctx, console):
        return 0
    if plan.empty:
        console.print("No changes. Nothing was deployed; no task was restarted.")
        for w in plan.warnings:
            console.print(f"warning: {w}", highlight=False, markup=False)
        return 0
    for line in format_plan(plan):
        console.print(line, highlight=False, markup=False)
    changed = {c.name for c in plan.service_changes}
    at_risk = sorted(changed & ci_self_services(ctx.repo, ctx.stack, env)) if allow_handoff else []
    if at_risk:
        image = handoff_image(env)
        # Prerequisites are safe to create from here: they restart nothing.
        for line in apply_prerequisites(ctx, plan, console):
            console.print(line)
        ctx.rerender()
        updated = sorted(c.name for c in plan.service_changes if c.action in ("create", "update"))
        # The job's `--with-registry-auth` must hand over the deploy token too: a stack deploy from
        # a CLI without it would give the services an empty credential for the site registry.
        with pull_login(ctx, console) as credential:
            name = launch_handoff(ctx, updated, image, timeout, docker_config() if credential else None)
        console.print(f"this deploy updates {', '.join(at_risk)}, which runs this CI job: handed off to the "
                      f"swarm job {name}, which outlives the job; polling it")
        code = poll_handoff(ctx, name, timeout + 120, console)
        if code == 0:
            remember_credential(ctx, credential)
        return code
    for line in apply_prerequisites(ctx, plan, console):
        console.print(line)
    ctx.rerender()
    outcomes = deploy_services(ctx, plan, timeout, console)
    if outcomes:
        console.print(outcome_table(outcomes))
    ok = report_failures(outcomes, console)
    if ok:
        for line in remove_stale_configs(ctx.client, ctx.rendered):
            console.print(line)
    console.print("deploy finished" if ok else Text.assemble(("deploy failed", "red"),
                                                             ": the services above rolled back or paused"))
    return 0 if ok else 1


def apply_rendered(stack: str, compose_text: str, services: list[str], timeout: float, console: Console) -> int:
    """What the hand-off job runs: deploy the given rendered file and wait for the services."""
    client = docker_client()
    started = time.time()
    stack_deploy(compose_text, stack)
    ctx = SwarmContext(None, {}, None, None, client)  # type: ignore[arg-type]
    outcomes = wait_with_progress(ctx, services, started, timeout, console)
    console.print(outcome_table(outcomes))
    return 0 if report_failures(outcomes, console) else 1

