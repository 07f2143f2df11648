"""Running this repository's real .gitlab-ci.yml with gitlab-ci-local (npm, 4.72.0).

Jobs run as a site runs them: in the ops image, with gitlab-ci-local's docker executor, given only
the volumes that the runner serving the job's tags has in the config.toml bidsflux renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from support import REPO_ROOT, copy_repository, require

PIPELINE_PARTS = ["stack", "schemas", "ci-templates", ".gitlab-ci.yml", "pyproject.toml"]
# Predefined variables the tests set to simulate an event.
PREDEFINED_OVERRIDES = ("CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH,CI_DEFAULT_BRANCH,CI_MERGE_REQUEST_IID,CI_PROJECT_ID,CI_SERVER_URL,"
                        "GITLAB_CI")
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
        self._tags: dict[str, list[str]] | None = None
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

    def job_tags(self) -> dict[str, list[str]]:
        """Each job's tags after includes and `extends` (gitlab-ci-local --preview), read once."""
        import yaml

        if self._tags is not None:
            return self._tags

        proc = subprocess.run([gitlab_ci_local(), "--preview"], cwd=self.path, capture_output=True, text=True,
                              timeout=120, env=_env())
        assert proc.returncode == 0, proc.stderr + proc.stdout
        doc = yaml.safe_load(proc.stdout[proc.stdout.index("---"):])
        self._tags = {k: list(v.get("tags") or []) for k, v in doc.items() if isinstance(v, dict) and "script" in v}
        return self._tags

    def run(self, job: str, variables: dict[str, str], image: str, helper: str, volumes: list[str],
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run one job for real in `image` with the docker executor and exactly `volumes`.

        The job container shares the host's network so that it reaches the GitLab emulator on
        127.0.0.1 (a site's runner reaches GitLab by its host name); GITLAB_CI is true as on a runner."""
        args = [gitlab_ci_local(), "--helper-image", helper, "--pull-policy", "if-not-present", "--network", "host",
                "--no-artifacts-to-source", "--ignore-predefined-vars", PREDEFINED_OVERRIDES,
                # The CI schema is checked by `bidsflux validate` and test_gitlab_ci.py; not per job.
                "--no-json-schema-validation"]
        for v in volumes:
            args += ["--volume", v]
        for k, v in {"GITLAB_CI": "true", "BIDSFLUX_OPS_IMAGE": image, **variables}.items():
            args += ["--variable", f"{k}={v}"]
        args.append(job)
        return subprocess.run(args, cwd=self.path, capture_output=True, text=True, timeout=timeout, env=_env())

    def artifacts(self, job: str) -> Path:
        """Where gitlab-ci-local put the job's artifacts (what GitLab would store)."""
        return self.path / ".gitlab-ci-local" / "artifacts" / job


def runner_volumes(root: Path, tags: list[str]) -> list[str]:
    """Volumes of the runner that would pick a job with `tags`, from the config.toml that
    `bidsflux runners register` writes for it (runners.yml + site.yml of the repository at `root`)."""
    import tomllib

    from bidsflux.gitlab.runners import render_config, runner_specs
    from bidsflux.site.yamlsource import load

    site = load(root / "stack" / "site.yml").data
    specs = runner_specs(load(root / "stack" / "runners.yml").data, site)
    # GitLab gives a job to a runner holding all of its tags (tags are set server side).
    chosen = [s for s in specs if set(tags) <= set(s.tags) and (tags or s.run_untagged)]
    assert chosen, f"no runner in runners.yml serves tags {tags}"
    spec = chosen[0]
    config = tomllib.loads(render_config([(spec, "glrt-test-not-a-token")], "http://gitlab.invalid"))
    return list(config["runners"][0]["docker"]["volumes"])


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{REPO_ROOT / '.venv/bin'}:{env.get('PATH', '')}"
    env.update(extra or {})
    return env
