"""`bidsflux ci ...`: the steps of the self-management pipeline that talk back to GitLab."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from bidsflux.diagnostics import UserError


def _known_secrets(env: dict[str, str]) -> list[str]:
    """Values the note or issue must not carry: the values file of this site when the job can read
    it, and the job's secret variables (the same scrubbing as the CLI's own output)."""
    from bidsflux.swarm.secretstore import known_secret_values

    site: dict | None = None  # type: ignore[type-arg]
    try:
        from bidsflux.site.repository import open_repository
        from bidsflux.site.yamlsource import load

        repo = open_repository(None, None)
        data = load(repo.site_file, repo.root).data
        site = data if isinstance(data, dict) else None
    except (UserError, OSError, ValueError):
        site = None  # no checkout here: the environment's values still count
    return known_secret_values(site, env)


def register(main: click.Group) -> None:
    from bidsflux.console import friendly_errors

    @main.group()
    def ci() -> None:
        """Pipeline helpers: plan notes, health and drift issues, branch guard."""

    @ci.command("plan-note")
    @click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--mr", "mr_iid", type=int, default=None, help="Merge request IID (default: CI_MERGE_REQUEST_IID).")
    @friendly_errors
    def plan_note(files: tuple[Path, ...], mr_iid: int | None) -> None:
        """Post the plans (plan-<domain>.json files) as one note on the merge request, updated in place."""
        from bidsflux.ci.reports import connect, gitlab_call, load_plans, plan_note_body, upsert_plan_note

        env = dict(os.environ)
        iid = mr_iid or (int(env["CI_MERGE_REQUEST_IID"]) if env.get("CI_MERGE_REQUEST_IID") else None)
        if iid is None:
            raise UserError("no merge request: CI_MERGE_REQUEST_IID is not set (run in a merge-request pipeline or pass --mr)")
        project_id = env.get("CI_PROJECT_ID") or env.get("CI_PROJECT_PATH")
        if not project_id:
            raise UserError("CI_PROJECT_ID is not set: run this inside a GitLab CI job")
        body = plan_note_body(load_plans(files), env.get("CI_PIPELINE_URL"), _known_secrets(env))
        # Merge-request pipelines hold no write token (the plan runs with a read_api token): the note
        # needs BIDSFLUX_GITLAB_NOTE_TOKEN (optional, e.g. a Reporter project access token); without
        # one, or if GitLab refuses it, the note goes to the job log and plan-note.md (artifact).
        if env.get("BIDSFLUX_GITLAB_NOTE_TOKEN"):
            env["BIDSFLUX_GITLAB_TOKEN"] = env["BIDSFLUX_GITLAB_NOTE_TOKEN"]
        if env.get("CI"):  # the job's artifact; never a stray file elsewhere
            Path("plan-note.md").write_text(body)
        try:
            gl = connect(env)
            project = gitlab_call("read the project", gl.projects.get, project_id, lazy=True)
            outcome = upsert_plan_note(project, iid, body)
        except UserError as exc:
            if not env.get("BIDSFLUX_GITLAB_NOTE_TOKEN") and ("403" in str(exc) or "not set" in str(exc)):
                click.echo(body)
                click.echo(f"plan note not posted ({str(exc)[:120]}): a merge-request pipeline has a read-only "
                           "token; the plan is above and in plan-note.md. Set BIDSFLUX_GITLAB_NOTE_TOKEN to post it.")
                return
            raise
        click.echo(f"plan note {outcome} on merge request !{iid}")

    @ci.command("issues")
    @click.option("--kind", type=click.Choice(["health", "drift", "backup"]), required=True)
    @click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @friendly_errors
    def issues(kind: str, report: Path) -> None:
        """Open, update or close one GitLab issue per failing check (health) or drifted domain (drift)."""
        from bidsflux.ci.reports import (
            connect,
            gitlab_call,
            problems_from_drift,
            problems_from_health,
            scrub_problems,
            sync_issues,
        )

        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{report}: not JSON ({exc})") from None
        env = dict(os.environ)
        problems, checked = problems_from_health(data, "Backup" if kind == "backup" else "Health check") if kind in ("health", "backup") else problems_from_drift(data)
        problems = scrub_problems(problems, _known_secrets(env))
        project_id = env.get("CI_PROJECT_ID") or env.get("CI_PROJECT_PATH")
        if not project_id:
            raise UserError("CI_PROJECT_ID is not set: run this inside a GitLab CI job")
        project = gitlab_call("read the project", connect(env).projects.get, project_id, lazy=True)
        done = sync_issues(project, kind, problems, checked)
        for action, keys in done.items():
            if keys:
                click.echo(f"{action}: {', '.join(keys)}")
        if not any(done.values()):
            click.echo("nothing to report")

    @ci.command("require-default-branch")
    @friendly_errors
    def require_default_branch() -> None:
        """Exit 1 unless this pipeline runs for the default branch (deploys come only from there)."""
        branch, default = os.environ.get("CI_COMMIT_BRANCH"), os.environ.get("CI_DEFAULT_BRANCH")
        if not default or branch != default:
            raise UserError(f"refusing to deploy from {branch or 'a non-branch pipeline'!s}: only the default branch ({default or 'unknown'}) deploys")
        click.echo(f"deploying from the default branch {default}")
