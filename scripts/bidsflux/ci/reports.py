"""What the self-management pipeline reports back into GitLab: one plan note per merge request,
updated in place on each push, and one issue per failing health check or drift, updated while
it lasts and closed on recovery."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidsflux.diagnostics import UserError

PLAN_MARKER = "<!-- bidsflux:plan -->"
ISSUE_LABEL = {"health": "bidsflux-health", "drift": "bidsflux-drift", "backup": "bidsflux-backup"}


def connect(env: Mapping[str, str]) -> Any:
    """python-gitlab client from a CI job's environment (token in BIDSFLUX_GITLAB_TOKEN: a masked
    CI variable holding the ops bot's token; CI_JOB_TOKEN cannot write notes or issues)."""
    import gitlab

    url = env.get("CI_SERVER_URL")
    token = env.get("BIDSFLUX_GITLAB_TOKEN")
    if not url:
        raise UserError("CI_SERVER_URL is not set: run this inside a GitLab CI job, or set CI_SERVER_URL to GitLab's URL")
    if not token:
        raise UserError("BIDSFLUX_GITLAB_TOKEN is not set: add the ops bot's token as a masked CI variable (bidsflux gitlab apply does)")
    from bidsflux.console import connect_timeout

    return gitlab.Gitlab(url, private_token=token, timeout=connect_timeout(), retry_transient_errors=True)


def gitlab_call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one python-gitlab call; API errors become a UserError naming what failed (never the token)."""
    from gitlab.exceptions import GitlabError
    from requests.exceptions import RequestException

    try:
        return func(*args, **kwargs)
    except GitlabError as exc:
        raise UserError(f"GitLab refused to {what}: {exc.response_code} {exc.error_message}") from None
    except RequestException as exc:
        import os

        from bidsflux.console import connect_timeout

        raise UserError(f"cannot reach GitLab at {os.environ.get('CI_SERVER_URL', '?')} to {what} ({type(exc).__name__}; "
                        f"waited up to {connect_timeout():g}s per request)") from None


# ------------------------------------------------------------------------------ plan note


def _change_line(change: Mapping[str, Any]) -> str:
    sign = {"create": "+", "update": "~", "remove": "-", "delete": "-", "rotate": "↻"}.get(str(change.get("action")), "?")
    fields = change.get("fields") or change.get("details") or {}
    shown = f" ({', '.join(sorted(fields))})" if fields else ""
    return f"{sign} {change.get('kind', '?')} {change.get('name', '?')}{shown}"


def plan_note_body(plans: Mapping[str, Any], pipeline_url: str | None = None, known: Iterable[str] = ()) -> str:
    """Markdown for people, the JSON for tools, per domain (swarm, gitlab, mercure); scrubbed of
    `known` secret values, token shapes and URL credentials like everything bidsflux prints."""
    from bidsflux.redact import scrub
    parts = [PLAN_MARKER, "### bidsflux plan", ""]
    total = 0
    for domain, plan in plans.items():
        changes = plan.get("changes", []) if isinstance(plan, dict) else []
        total += len(changes)
        if not changes:
            parts.append(f"**{domain}**: no changes")
            continue
        parts.append(f"**{domain}**: {len(changes)} change(s)")
        parts.append("```diff")
        parts.extend(_change_line(c) for c in changes)
        parts.append("```")
        parts.append("<details><summary>JSON</summary>\n\n```json\n" + json.dumps(plan, indent=2, sort_keys=True) + "\n```\n</details>")
    parts.append("")
    footer = f"{total} change(s) in total" if total else "Nothing to change: merging deploys nothing."
    if pipeline_url:
        footer += f" (pipeline {pipeline_url})"
    parts.append(footer)
    return scrub("\n".join(parts) + "\n", known)


def load_plans(files: Iterable[Path]) -> dict[str, Any]:
    plans: dict[str, Any] = {}
    for path in files:
        try:
            plans[path.stem.removeprefix("plan-")] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a plan in JSON ({exc})") from None
    return plans


def upsert_plan_note(project: Any, mr_iid: int, body: str) -> str:
    """Update the MR's bidsflux plan note in place, or create it; 'created', 'updated' or 'unchanged'."""
    mr = gitlab_call("read the merge request", project.mergerequests.get, mr_iid)
    notes = gitlab_call("list merge request notes", mr.notes.list, iterator=True)
    for note in notes:
        if PLAN_MARKER in (note.body or ""):
            if note.body == body:
                return "unchanged"
            note.body = body
            gitlab_call("update the plan note", note.save)
            return "updated"
    gitlab_call("create the plan note", mr.notes.create, {"body": body})
    return "created"


# ------------------------------------------------------------------------------ issues


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong now, keyed so the same problem maps to the same issue."""

    key: str
    title: str
    body: str


def problems_from_health(report: Mapping[str, Any], what: str = "Health check") -> tuple[list[Problem], list[str]]:
    """Failing checks of a `bidsflux health --format json` report, and the names of all checks run."""
    problems, names = [], []
    for check in report.get("checks", []):
        names.append(check["name"])
        if check.get("status") == "fail":
            details = "\n".join(f"- {d}" for d in check.get("details") or [])
            body = f"**{check['name']}** fails: {check.get('reason', '')}\n\nFix: {check.get('fix') or 'see details'}\n\n{details}".rstrip()
            problems.append(Problem(check["name"], f"{what} failing: {check['name']}", body))
    return problems, names


def scrub_problems(problems: list[Problem], known: Iterable[str]) -> list[Problem]:
    """Issue titles and bodies scrubbed like CLI output (a report file may come from anywhere)."""
    from bidsflux.redact import scrub

    known = list(known)
    return [Problem(p.key, scrub(p.title, known), scrub(p.body, known)) for p in problems]


def problems_from_drift(plan: Mapping[str, Any], domain: str = "swarm") -> tuple[list[Problem], list[str]]:
    """A non-empty plan against the live stack is drift: one issue per domain, listing the changes."""
    changes = plan.get("changes", [])
    if not changes:
        return [], [domain]
    body = "The live stack differs from the repository:\n\n```diff\n" + "\n".join(_change_line(c) for c in changes) + "\n```\n\n" \
        "Fix: revert the manual change, or commit it here and merge, so the repository describes the site."
    return [Problem(domain, f"Drift detected: {domain}", body)], [domain]


def sync_issues(project: Any, kind: str, problems: list[Problem], checked: list[str], now: dt.datetime | None = None) -> dict[str, list[str]]:
    """Open one labelled issue per problem (update it instead of opening a duplicate) and close the
    issues of checked keys that are no longer problems. Returns what was done per key."""
    label = ISSUE_LABEL[kind]
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    open_issues = gitlab_call("list open issues", project.issues.list, labels=[label], state="opened", iterator=True)
    by_key: dict[str, Any] = {}
    for issue in open_issues:
        for lab in issue.labels:
            if lab.startswith("check:"):
                by_key.setdefault(lab.removeprefix("check:"), issue)
    done: dict[str, list[str]] = {"opened": [], "updated": [], "unchanged": [], "closed": []}
    wanted = {p.key: p for p in problems}
    for key, problem in wanted.items():
        body = f"{problem.body}\n\n_Last seen failing: {stamp}._"
        issue = by_key.get(key)
        if issue is None:
            gitlab_call("open an issue", project.issues.create,
                        {"title": problem.title, "description": body, "labels": [label, f"check:{key}"]})
            done["opened"].append(key)
        elif (issue.description or "").split("\n\n_Last seen failing:")[0] == problem.body:
            done["unchanged"].append(key)
        else:
            issue.description = body
            gitlab_call("update an issue", issue.save)
            done["updated"].append(key)
    for key in checked:
        if key in wanted or key not in by_key:
            continue
        issue = by_key[key]
        issue.description = (issue.description or "") + f"\n\nRecovered: {stamp}."
        issue.state_event = "close"
        gitlab_call("close a recovered issue", issue.save)
        done["closed"].append(key)
    return done
