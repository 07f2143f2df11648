"""`mercure plan|push`: the wanted mercure.json against the live one, written under Mercure's lock."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from bidsflux.diagnostics import UserError
from bidsflux.mercure import config as mc
from bidsflux.mercure.compose import COMPOSE_PROJECT, err, project_of
from bidsflux.mercure.files import atomic_write, mercure_lock, read_json


def load_rules(site: str | None, root: str | None) -> tuple[Any, dict[str, Any], Any]:
    """Repository, site data and the rules document, after `validate` found nothing wrong."""
    from bidsflux.site.repository import open_repository
    from bidsflux.site.yamlsource import load
    from bidsflux.validation import load_valid

    repo = open_repository(site, root)
    site_doc, _ = load_valid(repo)
    return repo, site_doc.data, load(repo.mercure_rules, repo.root)


def config_dir_of(site: dict[str, Any], override: str | None) -> Path:
    return Path(override) if override else Path(site["paths"]["mercure_base"]["path"]) / "config"


def check_model(config: dict[str, Any], schema_dir: Path, what: str) -> None:
    problems = mc.model_problems(config, schema_dir)
    if problems:
        raise UserError(f"{what} would not load in Mercure; nothing was written:\n  " + "\n  ".join(problems))


def wanted_config(repo: Any, site: dict[str, Any], rules: Any, live: dict[str, Any] | None, prune: bool) -> dict[str, Any]:
    managed = mc.managed_config(site, rules)
    wanted = mc.merge(live if live is not None else mc.MERCURE_DEFAULTS, managed, prune=prune)
    check_model(wanted, repo.schema_dir, "the merged mercure.json")
    return wanted


def report_unmanaged(live: dict[str, Any] | None, repo: Any, site: dict[str, Any], rules: Any, prune: bool) -> None:
    if live is None:
        return
    extra = mc.unmanaged_entries(live, mc.managed_config(site, rules))
    for section, names in extra.items():
        verb = "removed (--prune)" if prune else "kept (not in stack/mercure/rules.yml; --prune removes them)"
        err.print(f"{section}: {', '.join(names)} {verb}")


def restart_receiver(project: str = COMPOSE_PROJECT) -> list[str]:
    """Restart the receiver container(s) of the compose project; names restarted."""
    from docker.errors import APIError

    from bidsflux.swarm.secretstore import docker_client

    client = docker_client()
    try:
        found = client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                          "com.docker.compose.service=receiver"]})
        for c in found:
            c.restart(timeout=10)  # docker's default stop timeout; receiver.sh (PID 1) ignores SIGTERM
    except APIError as exc:
        raise UserError(f"cannot restart Mercure's receiver: {exc.explanation or exc}") from None
    return [c.name for c in found]


def push(repo: Any, site: dict[str, Any], rules: Any, config_dir: Path, lock_timeout: float,
         prune: bool = False, restart: bool = True, out: Console | None = None) -> bool:
    """Merge the managed parts into config_dir/mercure.json. True when the file changed."""
    out = out or Console(markup=False, highlight=False, soft_wrap=True)
    target = config_dir / "mercure.json"
    if not config_dir.is_dir():
        raise UserError(f"{config_dir} does not exist: start Mercure first (`bidsflux mercure up`) or pass --config-dir")
    live = read_json(target)
    wanted = wanted_config(repo, site, rules, live, prune)
    if live == wanted:
        out.print("mercure.json is up to date; nothing to push")
        return False
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as progress:
        task = progress.add_task(f"waiting for {target.with_suffix('.lock')} (held by someone else; "
                                 f"timeout {lock_timeout:g}s)", visible=False)

        def on_wait(_: float) -> None:
            progress.update(task, visible=True)

        with mercure_lock(target, lock_timeout, on_wait):
            progress.update(task, visible=False)
            # Re-read under the lock: the GUI may have saved while we waited.
            live = read_json(target)
            wanted = wanted_config(repo, site, rules, live, prune)
            if live == wanted:
                out.print("mercure.json is up to date; nothing to push")
                return False
            out.print(mc.diff(live, wanted), end="", markup=False)
            owner = (site["paths"]["mercure_base"].get("uid", 0), site["paths"]["mercure_base"].get("gid", 0))
            # Not world-readable: it holds the bookkeeper's API key.
            backup = atomic_write(target, mc.dumps(wanted), 0o600, owner if live is None else None)
    out.print(f"wrote {target}" + (f" (previous version kept as {backup.name})" if backup else ""))
    changed = mc.receiver_changed(live or {}, wanted) if live is not None else []
    if changed:
        if not restart:
            out.print(f"receiver settings changed ({', '.join(changed)}): restart its container to apply them")
        else:
            try:
                names = restart_receiver(project_of(site))
            except UserError as exc:
                raise UserError(f"mercure.json was written, but the receiver, which reads {', '.join(changed)} "
                                f"only at start, was not restarted: {exc}") from None
            out.print(f"receiver settings changed ({', '.join(changed)}); restarted {', '.join(names) or 'no running receiver'}")
    return True


