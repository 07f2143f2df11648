"""The end of every command's --help: an example and the exit codes, kept in one table so each
domain's cli.py stays thin; also which commands talk to an engine (they get --connect-timeout)."""

from __future__ import annotations

import click

from bidsflux.console import EXIT_CHANGES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, connect_timeout_option

# Command path -> example lines (shell, one per line; a trailing "# ..." says what it does).
EXAMPLES: dict[str, list[str]] = {
    "validate": ["bidsflux validate", "bidsflux --root /srv/bidsflux-ops validate --format json"],
    "render": ["bidsflux render --output /tmp/rendered"],
    "bootstrap": ["sudo bidsflux bootstrap --create-dirs     # or ./scripts/bootstrap.sh"],
    "plan": ["bidsflux plan --format json > plan.json; test $? -ne 1"],
    "deploy": ["bidsflux deploy                   # shows the plan and asks",
               "bidsflux deploy --plan plan.json --yes   # exactly a reviewed plan"],
    "doctor": ["bidsflux doctor                   # on any node, any time"],
    "secrets list": ["bidsflux secrets list --format json"],
    "secrets rotate": ["bidsflux secrets rotate s3_secret", "bidsflux secrets rotate --all --yes"],
    "secrets gc": ["bidsflux secrets gc"],
    "swarm join-command": ["bidsflux swarm join-command"],
    "swarm join": ["sudo bidsflux swarm join --token SWMTKN-... 10.0.0.5:2377 --create-dirs   # or ./scripts/bootstrap.sh --join ..."],
    "gitlab plan": ["BIDSFLUX_GITLAB_TOKEN=glpat-... bidsflux gitlab plan --format json"],
    "gitlab apply": ["bidsflux gitlab apply --root-token"],
    "gitlab root-token": ["bidsflux gitlab root-token --days 1", "bidsflux gitlab root-token --revoke"],
    "gitlab tokens rotate": ["bidsflux gitlab tokens rotate dicom_bot"],
    "runners register": ["bidsflux runners register --only gitlab-runner-dind"],
    "runners list": ["bidsflux runners list --format json"],
    "images pin": ["bidsflux images pin --tag 3f2c9e1d...   # the commit the containers pipeline built"],
    "mercure render": ["bidsflux mercure render > mercure.json"],
    "mercure plan": ["bidsflux mercure plan --config-dir /srv/bidsflux/mercure/config"],
    "mercure push": ["bidsflux mercure push --lock-timeout 30"],
    "mercure up": ["bidsflux mercure up --check-only"],
    "health": ["bidsflux health --check s3 --check dicom --timeout 10",
               "bidsflux health --format json --junit health.xml"],
    "backup list": ["bidsflux backup list --format json"],
    "backup drill": ["bidsflux backup drill latest --identity ~/backup-key.txt --scratch-s3 http://127.0.0.1:9100"],
    "restore": ["bidsflux restore latest --identity ~/backup-key.txt --only values"],
    "ci plan-note": ["bidsflux ci plan-note plan-swarm.json plan-gitlab.json"],
    "ci issues": ["bidsflux ci issues --kind health health.json"],
    "ci require-default-branch": ["bidsflux ci require-default-branch && bidsflux deploy"],
}

# Exit codes beyond the ones every command has.
EXTRA_EXIT_CODES: dict[str, dict[int, str]] = {
    "validate": {EXIT_ERROR: "a problem was found (every one is listed)"},
    "plan": {EXIT_CHANGES: "changes pending"},
    "gitlab plan": {EXIT_CHANGES: "changes pending"},
    "mercure plan": {EXIT_CHANGES: "changes pending"},
    "deploy": {EXIT_ERROR: "an error, or an update paused or rolled back"},
    "health": {EXIT_ERROR: "a check failed (warnings do not fail)"},
    "doctor": {EXIT_ERROR: "a check failed"},
    "backup drill": {EXIT_ERROR: "the snapshot does not restore whole"},
    "restore": {EXIT_ERROR: "refused or failed (the message says which step)"},
}

# Commands that call the Docker engine or GitLab: they take --connect-timeout.
ENGINE_COMMANDS = {
    "render", "bootstrap", "plan", "deploy", "doctor", "secrets list", "secrets rotate", "secrets gc",
    "swarm join-command", "swarm join", "gitlab plan", "gitlab apply", "gitlab root-token", "gitlab tokens rotate",
    "runners register", "runners list", "mercure push", "mercure up", "health", "backup drill", "restore",
    "ci plan-note", "ci issues",
}


def exit_codes(path: str) -> dict[int, str]:
    codes = {EXIT_OK: "success" if path not in EXTRA_EXIT_CODES or EXIT_CHANGES not in EXTRA_EXIT_CODES[path]
             else "no change", EXIT_ERROR: "error (the message says what and how to fix it)"}
    codes.update(EXTRA_EXIT_CODES.get(path, {}))
    codes[EXIT_USAGE] = "usage error (unknown option, bad value on the command line)"
    codes[EXIT_INTERRUPTED] = "interrupted"
    return dict(sorted(codes.items()))


def epilog(path: str) -> str:
    examples = EXAMPLES.get(path) or [f"bidsflux {path}"]
    lines = ["\b", "Examples:", *(f"  {e}" for e in examples), "", "\b", "Exit codes:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in exit_codes(path).items()]
    return "\n".join(lines)


def decorate(group: click.Group, prefix: str = "") -> None:
    """Give every command of `group` (recursively) its examples and exit codes, and
    --connect-timeout where it talks to an engine."""
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(cmd, click.Group):
            decorate(cmd, f"{path} ")
            continue
        if not cmd.epilog:
            cmd.epilog = epilog(path)
        if path in ENGINE_COMMANDS and not any(p.name == "connect_timeout" for p in cmd.params):
            # the decorator appends the option to a function's params; take it from a throwaway one
            probe = click.command()(connect_timeout_option(lambda: None))
            cmd.params.extend(p for p in probe.params if p.name == "connect_timeout")
