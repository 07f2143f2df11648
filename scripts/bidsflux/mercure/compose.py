"""Mercure's compose project: the rendered file, its `.env`, the data volume, compose runs, waits
and the state of each service."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.diagnostics import Diagnostic, UserError
from bidsflux.mercure.install import SERVICES, WORKER_REPLICAS
from bidsflux.site.render import dump_yaml
from bidsflux.site.repository import Repository
from bidsflux.site.yamlsource import Document, load

err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)  # names are never markup
COMPOSE_PROJECT = "mercure"
DATA_VOLUME = "mercure_data"  # the name Mercure's processor looks up (process/process_series.py)
DOCKER_SOCKET = "/var/run/docker.sock"


def compose_command() -> list[str]:
    """`docker compose` when the plugin exists, else Debian's `docker-compose`."""
    import shutil

    import sh

    if shutil.which("docker"):
        try:
            sh.docker("compose", "version", _ok_code=[0])
            return ["docker", "compose"]
        except sh.ErrorReturnCode:
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise UserError("neither `docker compose` nor `docker-compose` is installed: apt-get install docker-compose "
                    "(or the docker-compose-plugin package)")


def read_dotenv(folder: Path) -> dict[str, str]:
    try:
        text = (folder / ".env").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def project_of(site: dict[str, Any]) -> str:
    """The compose project `mercure up` last started for this site (its `.env`), else `mercure`."""
    base = Path(site["paths"]["mercure_base"]["path"])
    return read_dotenv(base).get("COMPOSE_PROJECT_NAME") or COMPOSE_PROJECT


def docker_gid() -> int:
    """Group of the Docker socket: the UI and processor run with it to start module containers."""
    try:
        return os.stat(DOCKER_SOCKET).st_gid
    except OSError as exc:
        raise UserError(f"cannot stat {DOCKER_SOCKET} ({exc.strerror}): Mercure's processor needs the Docker socket") from None


def write_dotenv(folder: Path, project: str) -> None:
    """`.env` next to the compose file: compose reads the project name and `${DOCKER_GID}` from it
    (as upstream's install.sh substitutes them), so a plain `docker-compose` there does the same."""
    text = ("# Written by `bidsflux mercure up`; read by docker compose in this folder.\n"
            f"COMPOSE_PROJECT_NAME={project}\nDOCKER_GID={docker_gid()}\n")
    path = folder / ".env"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = folder / f".env.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def render_mercure_compose(repo: Repository, site: Document, v1: bool = False) -> str:
    """The rendered compose file; for docker-compose 1.x without the top-level `name` it rejects
    (the project name comes from -p and `.env`)."""
    return _render_compose(load(repo.mercure_compose, repo.root), site, v1)


def _render_compose(doc: Document, site: Document, v1: bool = False) -> str:
    from bidsflux.site.render import TemplateRenderer, template_context  # noqa: I001

    renderer = TemplateRenderer(doc, template_context(site.data, lambda name: name))
    data = {k: v for k, v in renderer.value(doc.data, []).items() if not str(k).startswith("x-")}
    if renderer.errors:
        raise UserError("", renderer.errors)
    if v1:
        data.pop("name", None)
    return "# Rendered by `bidsflux render` from stack/mercure/docker-compose.yml. Do not edit.\n" + dump_yaml(data)


def check_compose_file(compose: Document, site: Document, template: Document | None) -> list[Diagnostic]:
    """`bidsflux validate`'s hook for stack/mercure/docker-compose.yml: its templates render."""
    try:
        _render_compose(compose, site)
    except UserError as exc:
        return exc.diagnostics
    return []


def check_data_volume(data_dir: Path) -> None:
    """`mercure_data` must bind `data_dir`: Mercure's processor mounts module folders from its device."""
    from docker.errors import NotFound

    from bidsflux.swarm.secretstore import docker_client

    try:
        vol = docker_client().api.inspect_volume(DATA_VOLUME)
    except NotFound:
        return
    device = (vol.get("Options") or {}).get("device")
    if device and os.path.realpath(device) != os.path.realpath(data_dir):
        raise UserError(f"the Docker volume {DATA_VOLUME} binds {device}, not this site's {data_dir}; Mercure's "
                        f"processor finds its data folder by that fixed name, so only one Mercure runs per Docker "
                        f"engine. Stop the other one and `docker volume rm {DATA_VOLUME}`, then run again")


def run_compose(compose_file: Path, project: str, *args: str) -> str:
    import sh

    cmd = compose_command()
    try:
        return str(sh.Command(cmd[0])(*cmd[1:], "-p", project, "-f", str(compose_file), *args,
                                      _cwd=str(compose_file.parent), _err_to_out=True, _env={**os.environ}))
    except sh.ErrorReturnCode as exc:
        text = exc.stdout.decode(errors="replace").strip().splitlines()
        raise UserError(f"{' '.join(cmd)} {' '.join(args)} failed: " + " | ".join(text[-5:])) from None


@dataclass(frozen=True)
class ServiceState:
    service: str
    containers: int
    wanted: int
    problems: tuple[str, ...]  # one per container not running and healthy, or for missing ones
    restarts: int = 0  # restarts of its containers so far (a crash loop may look "running" at times)

    @property
    def ok(self) -> bool:
        return not self.problems


def service_states(project: str, client: Any = None) -> list[ServiceState]:
    """Every Mercure service of `project`: its containers running (and healthy where checked)."""
    if client is None:
        from bidsflux.swarm.secretstore import docker_client

        client = docker_client()
    found: dict[str, list[Any]] = {}
    for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        found.setdefault(c.labels.get("com.docker.compose.service", "?"), []).append(c)
    out = []
    for service in SERVICES:
        wanted = WORKER_REPLICAS if service.startswith("worker") else 1
        problems = []
        for c in sorted(found.get(service, []), key=lambda c: c.name):
            state = c.attrs.get("State", {})
            health = (state.get("Health") or {}).get("Status")
            if state.get("Restarting"):
                problems.append(f"{c.name} restarting (exit code {state.get('ExitCode')})")
            elif c.status != "running":
                problems.append(f"{c.name} {c.status} (exit code {state.get('ExitCode')})")
            elif health not in (None, "healthy"):
                problems.append(f"{c.name} {health}")
        count = len(found.get(service, []))
        if count < wanted:
            problems.append(f"{wanted - count} of {wanted} container(s) missing")
        restarts = sum(int(c.attrs.get("RestartCount") or 0) for c in found.get(service, []))
        out.append(ServiceState(service, count, wanted, tuple(problems), restarts))
    return out


def wait_healthy(project: str, timeout: float) -> None:
    start = time.monotonic()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as p:
        task = p.add_task("waiting for Mercure's containers to be running and healthy")
        previous: dict[str, int] = {}
        while True:
            states = service_states(project)
            restarts = {s.service: s.restarts for s in states}
            looping = [k for k, n in restarts.items() if k in previous and n != previous[k]]
            problems = [f"{s.service}: {', '.join(s.problems)}" for s in states if not s.ok]
            problems += [f"{k}: restarted {restarts[k] - previous[k]} time(s) in 2s" for k in looping]
            # Done when everything runs through two polls without a restart in between.
            if not problems and previous:
                return
            if time.monotonic() - start > timeout:
                raise UserError(f"Mercure not healthy after {timeout:g}s: " + "; ".join(problems)
                                + f"; see `docker compose -p {project} logs SERVICE`")
            previous = restarts
            waiting = [s.service for s in states if not s.ok] + looping
            p.update(task, description=f"waiting for {', '.join(waiting) or 'a second look'} ({timeout:g}s timeout)")
            time.sleep(2)


def site_data_doc(repo: Any) -> Any:
    return load(repo.site_file, repo.root)
