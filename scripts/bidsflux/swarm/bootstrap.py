"""Day zero on the manager: preflight, swarm, labels, network, secrets, stack, summary.

"Apply from nothing": every step looks first and only acts when something is missing, so a
second run changes nothing and says so."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bidsflux.diagnostics import UserError
from bidsflux.swarm import preflight
from bidsflux.swarm.deploy import SwarmContext, apply_prerequisites, deploy_services, outcome_table, report_failures
from bidsflux.swarm.plan import format_plan


def join_command(client: Any, advertise_addr: str | None = None) -> str:
    """`docker swarm join` for a worker (the processing server)."""
    swarm = client.swarm
    swarm.reload()
    token = swarm.attrs["JoinTokens"]["Worker"]
    managers = (client.info().get("Swarm") or {}).get("RemoteManagers") or []
    addr = managers[0]["Addr"] if managers else f"{advertise_addr}:2377"
    return f"docker swarm join --token {token} {addr}"


def init_swarm(client: Any, site: dict[str, Any]) -> bool:
    """Initialise a swarm when this engine has none; True when it did."""
    state, _ = preflight.swarm_state(client)
    if state == "active":
        return False
    sw = site["swarm"]
    client.swarm.init(advertise_addr=sw["advertise_addr"], listen_addr="0.0.0.0:2377",
                      data_path_port=int(sw.get("data_path_port", 4789)))
    return True


def run_preflight(ctx: SwarmContext, create_dirs: bool, console: Console,
                  confirm: Callable[[str], None] | None = None) -> None:
    site, rendered = ctx.site, ctx.rendered.data
    findings: list[preflight.Finding] = []
    findings += preflight.check_engine(ctx.client)
    findings += preflight.check_privileges()
    findings += preflight.check_swarm(ctx.client)
    dirs = preflight.data_dirs(site, rendered)
    missing = [d for d in dirs if not d.path.exists()]
    if create_dirs and missing and confirm is not None:
        confirm(f"bootstrap will create {len(missing)} data folder(s) with the owner and mode of site.yml: "
                + ", ".join(f"{d.path} ({d.uid}:{d.gid} {d.mode:04o})" for d in missing))
    findings += preflight.check_dirs(dirs, create_dirs)
    ours = _ports_held_by_stack(ctx)
    findings += preflight.check_ports(preflight.published_ports(rendered), ours)
    health = site.get("health") or {}
    findings += preflight.check_disk(dirs, int(health.get("disk_warn_percent", 80)), int(health.get("disk_fail_percent", 90)))
    findings += preflight.check_tools()
    failed = preflight.print_findings(findings, console)
    if failed:
        raise UserError("preflight failed; nothing was changed:\n" + "\n".join(f"  - {f}" for f in failed))


def _ports_held_by_stack(ctx: SwarmContext) -> set[int]:
    from docker.errors import APIError

    try:
        services = ctx.client.api.services(filters={"label": f"com.docker.stack.namespace={ctx.stack}"})
    except APIError:
        return set()  # no swarm yet: nothing of ours runs
    return {int(p["PublishedPort"]) for s in services for p in (s["Spec"].get("EndpointSpec") or {}).get("Ports") or []
            if p.get("PublishedPort")}


def tls_day_zero(ctx: SwarmContext, console: Console) -> list[str]:
    """Certificates, the proxy's Caddyfile and the tls_ca_bundle secret, before the stack is
    deployed: the proxy and every client mount them (the proxy domain owns how)."""
    from bidsflux.proxy.apply import run, swarm_reloader

    _, done = run(ctx.site, ctx.repo.root, console, ctx.client, swarm_reloader(ctx.client, ctx.stack))
    return [f"tls: {line}" for line in done]


def gitlab_day_zero(ctx: SwarmContext, console: Console, timeout: float | None = None) -> None:
    """Hook for GitLab's day zero (root token, bots, projects, runner registration), called once the
    stack has converged. It belongs to the GitLab engine; until that module provides
    `bidsflux.gitlab.dayzero.run(ctx, console)`, bootstrap only says what is left to do."""
    import importlib

    try:
        module = importlib.import_module("bidsflux.gitlab.dayzero")
    except ModuleNotFoundError:
        console.print("GitLab day zero (root token, bots, runner registration) is not available in this version; "
                      "the stack runs without registered runners until it is")
        return
    module.run(ctx, console, timeout)


def held_services(ctx: SwarmContext) -> set[str]:
    """DICOM endpoint services this bootstrap starts only after their site-built image is pinned."""
    from bidsflux.images.dayzero import held_services as held
    from bidsflux.site.yamlsource import load

    live = {s["Spec"]["Name"].removeprefix(f"{ctx.stack}_") for s in _stack_services(ctx)}
    return held(ctx.site, load(ctx.repo.gitlab_file, ctx.repo.root).data or {}, live)


def _stack_services(ctx: SwarmContext) -> list[dict[str, Any]]:
    from docker.errors import APIError

    try:
        return list(ctx.client.api.services(filters={"label": f"com.docker.stack.namespace={ctx.stack}"}))
    except APIError:
        return []  # no swarm yet


def hold(ctx: SwarmContext, held: set[str]) -> None:
    """Leave `held` out of the rendered stack (and so out of this deploy's plan)."""
    for name in held:
        (ctx.rendered.data.get("services") or {}).pop(name, None)


def image_day_zero(ctx_factory: Callable[[], SwarmContext], held: set[str], timeout: float, console: Console) -> int:
    """After GitLab's day zero: build (if needed) and pin the endpoint's image, then deploy what was
    held, while the step's token still lets the swarm pull the image."""
    from bidsflux.images.dayzero import run as run_images

    def deploy() -> list[Any]:
        ctx = ctx_factory()  # site.yml now names the pinned image
        if ctx.site["dicom_endpoint"]["kind"] == "mercure":
            console.print("Mercure's indexer module runs the pinned image from the next `bidsflux mercure push` "
                          "(start Mercure with `bidsflux mercure up` first)", highlight=False, markup=False)
        plan = ctx.plan()
        outcomes = deploy_services(ctx, plan, timeout, console)
        if outcomes:
            console.print(outcome_table(outcomes))
        started = [f"{c.action} {c.name}" for c in plan.service_changes]
        if started and report_failures(outcomes, console):
            console.print(f"deployed with the pinned image: {', '.join(started)}", highlight=False, markup=False)
        return outcomes

    result = run_images(ctx_factory(), console, then=deploy)
    if result.skipped_reason:
        console.print(f"image step: no change ({result.skipped_reason})", highlight=False, markup=False)
    else:
        console.print(f"image step: built {result.built}", highlight=False, markup=False)
        for p in result.pins:
            console.print(f"  images.{p.key}: {p.after}" + ("" if p.changed else " (already)"), highlight=False, markup=False)
        if result.committed:
            console.print(f"  committed site.yml ({result.committed[:12]}) and pushed it to GitLab", highlight=False,
                          markup=False)
    outcomes = result.then if result.then is not None else deploy()
    if any(not o.ok for o in outcomes):
        console.print(Text.assemble(("bootstrap failed", "red"), f": the DICOM endpoint ({', '.join(sorted(held)) or 'services'}) "
                                    "did not start; fix it and run bootstrap again (it resumes)"))
        return 1
    return 0


def run_bootstrap(ctx_factory: Callable[[], SwarmContext], create_dirs: bool, timeout: float, console: Console,
                  confirm: Callable[[str], None], skip_gitlab: bool = False, gitlab_timeout: float | None = None) -> int:
    """`ctx_factory()` loads site, template and engine; it is called again after swarm init so
    secret versions are read from the new swarm."""
    ctx: SwarmContext = ctx_factory()
    run_preflight(ctx, create_dirs, console, confirm)
    state, _ = preflight.swarm_state(ctx.client)
    if state != "active":
        confirm(f"bootstrap will initialise a swarm on this host and deploy the stack {ctx.stack}")
    elif not ctx.plan().empty:
        confirm(f"bootstrap will change the swarm (see `bidsflux plan`) and deploy the stack {ctx.stack}")
    changes: list[str] = []
    if init_swarm(ctx.client, ctx.site):
        changes.append(f"initialised a swarm (advertise {ctx.site['swarm']['advertise_addr']}, data path port "
                       f"{ctx.site['swarm'].get('data_path_port', 4789)})")
        ctx = ctx_factory()
    join = join_command(ctx.client, ctx.site['swarm']['advertise_addr'])
    console.print(f"worker join command (run on the processing server): {join}\n"
                  f"  or from this repository there: ./scripts/bootstrap.sh --join {join.removeprefix('docker swarm join ')}",
                  highlight=False, markup=False)
    changes += tls_day_zero(ctx, console)
    held = held_services(ctx)
    ctx.rerender()
    hold(ctx, held)
    plan = ctx.plan()
    if not plan.empty:
        for line in format_plan(plan):
            console.print(line, highlight=False, markup=False)
    changes += apply_prerequisites(ctx, plan, console)
    ctx.rerender()
    hold(ctx, held)
    plan = ctx.plan()
    started = time.monotonic()
    outcomes = deploy_services(ctx, plan, timeout, console)
    if plan.service_changes:
        changes.append(f"deployed stack {ctx.stack}: " + ", ".join(f"{c.action} {c.name}" for c in plan.service_changes))
    if outcomes:
        console.print(outcome_table(outcomes))
    if not report_failures(outcomes, console):
        console.print(Text.assemble(("bootstrap failed", "red"), ": fix the services above and run it again (it resumes)"))
        return 1
    summary = Table(title=f"bootstrap of {ctx.stack}")
    summary.add_column("what")
    summary.add_column("state", overflow="fold")
    summary.add_row("stack", ctx.stack)
    summary.add_row("services", ", ".join(sorted(ctx.desired().services)))
    summary.add_row("network", f"{ctx.network_name} ({ctx.site['swarm']['network']['subnet']})")
    summary.add_row("secrets", f"{len(ctx.rendered.secrets)} versioned swarm secrets; values in {ctx.site['secrets']['file']}")
    summary.add_row("took", f"{time.monotonic() - started:.1f}s")
    console.print(summary)
    if changes:
        console.print("Changes made:")
        for c in changes:
            console.print(f"  - {c}", highlight=False, markup=False)
    else:
        console.print("No changes: the site was already bootstrapped and in sync.")
    if held:
        console.print(f"held until its image is built and pinned: {', '.join(sorted(held))} (the DICOM endpoint "
                      "runs an image the site builds; GitLab's registry did not exist before this deploy)",
                      highlight=False, markup=False)
    if skip_gitlab:
        console.print("GitLab day zero skipped (--skip-gitlab); run it later with "
                      f"`bidsflux bootstrap --site {ctx.repo.site_file} --yes` (the swarm part then changes nothing)",
                      highlight=False, markup=False)
        return 0
    gitlab_day_zero(ctx, console, gitlab_timeout)
    if held or _endpoint_image_built_here(ctx):
        return image_day_zero(ctx_factory, held, timeout, console)
    return 0


def _endpoint_image_built_here(ctx: SwarmContext) -> bool:
    from bidsflux.images.dayzero import built_project, endpoint_image_key
    from bidsflux.site.yamlsource import load

    return built_project(ctx.site, load(ctx.repo.gitlab_file, ctx.repo.root).data or {},
                         endpoint_image_key(ctx.site)) is not None
