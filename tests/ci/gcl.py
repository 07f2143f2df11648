"""Running this repository's real .gitlab-ci.yml with gitlab-ci-local (npm, 4.72.0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from support import REPO_ROOT, copy_repository, require

PIPELINE_PARTS = ["stack", "schemas", "ci-templates", ".gitlab-ci.yml", "pyproject.toml"]
# Predefined variables the tests set to simulate an event.
PREDEFINED_OVERRIDES = "CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH,CI_DEFAULT_BRANCH,CI_MERGE_REQUEST_IID,CI_PROJECT_ID,CI_SERVER_URL"
GIT = ["git", "-c", "user.email=ci@bidsflux.invalid", "-c", "user.name=bidsflux tests"]


def gitlab_ci_local() -> str:
    found = shutil.which("gitlab-ci-local") or str(REPO_ROOT / ".tools/node_modules/.bin/gitlab-ci-local")
    require(Path(found).exists(), "gitlab-ci-local is not installed (./scripts/test.sh installs it from npm)")
    return found


class PipelineRepo:
    """A git repository holding a copy of the pipeline, with an `origin` whose main is the base,
    so `rules: changes:` compare a new commit against it as GitLab compares a push."""

    def __init__(self, path: Path, source: Path = REPO_ROOT) -> None:
        self.path = path
        origin = path.parent / "origin.git"
        copy_repository(path, PIPELINE_PARTS, source)
        self.git("init", "-q", "-b", "main")
        self.git("add", "-A")
        self.git("commit", "-qm", "base")
        subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
        self.git("remote", "add", "origin", str(origin))
        self.git("push", "-q", "origin", "main")
        self.git("remote", "set-head", "origin", "main")

    def git(self, *args: str) -> str:
        return subprocess.run([*GIT, *args], cwd=self.path, check=True, capture_output=True, text=True).stdout

    def commit_change(self, rel: str, text: str = "\n# changed\n") -> None:
        with open(self.path / rel, "a", encoding="utf-8") as fh:
            fh.write(text)
        self.git("commit", "-qam", f"change {rel}")

    def listing(self, *variables: str) -> list[dict]:
        """`gitlab-ci-local --list-json` for an event given as VAR=value strings."""
        args = [gitlab_ci_local(), "--list-json", "--ignore-predefined-vars", PREDEFINED_OVERRIDES]
        for v in variables:
            args += ["--variable", v]
        proc = subprocess.run(args, cwd=self.path, capture_output=True, text=True, timeout=120, env=_env())
        assert proc.returncode == 0, proc.stderr + proc.stdout
        # progress lines may precede the JSON document
        return json.loads(proc.stdout[proc.stdout.index("\n[") + 1:] if not proc.stdout.startswith("[") else proc.stdout)

    def jobs(self, *variables: str) -> list[str]:
        """Jobs GitLab would create for an event (when:never dropped), in pipeline order."""
        return [j["name"] for j in self.listing(*variables) if j["when"] != "never"]

    def when(self, job: str, *variables: str) -> str:
        return next(j["when"] for j in self.listing(*variables) if j["name"] == job)

    def run(self, jobs: list[str], variables: dict[str, str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run jobs for real with the shell executor; bidsflux comes from this checkout's venv."""
        args = [gitlab_ci_local(), "--force-shell-executor", "--ignore-predefined-vars", PREDEFINED_OVERRIDES]
        for k, v in variables.items():
            args += ["--variable", f"{k}={v}"]
        args += jobs
        return subprocess.run(args, cwd=self.path, capture_output=True, text=True, timeout=timeout, env=_env(env))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{REPO_ROOT / '.venv/bin'}:{env.get('PATH', '')}"
    env.update(extra or {})
    return env
