"""`bidsflux validate` on stack/runners.yml: runner scope against host access, GitLab's tag rule, versions."""

from __future__ import annotations

from pathlib import Path

from support import cli


def _validate(root: Path) -> tuple[int, str]:
    r = cli("validate", "--root", str(root))
    return r.exit_code, r.output


def test_shipped_fleet_is_valid(repo_copy: Path) -> None:
    code, out = _validate(repo_copy)
    assert code == 0, out


def test_instance_runner_with_host_access_is_refused(repo_copy: Path) -> None:
    f = repo_copy / "stack" / "runners.yml"
    text = f.read_text()
    # The processing runner as it was: an instance runner with SYS_ADMIN, /dev/fuse, apparmor:unconfined.
    f.write_text(text.replace("  processing-fuse:\n    description: apptainer jobs of the ops group (FUSE, SYS_ADMIN); "
                              "group-scoped because those options reach the host\n    type: group\n    owner: ni-dataops\n",
                              "  processing-fuse:\n    description: x\n    type: instance\n"))
    code, out = _validate(repo_copy)
    assert code == 1 and "runners.processing-fuse.type" in out and "SYS_ADMIN" in out and "/dev/fuse" in out
    assert "apparmor:unconfined" in out


def test_docker_socket_runner_must_be_locked_protected_project_runner(repo_copy: Path) -> None:
    f = repo_copy / "stack" / "runners.yml"
    f.write_text(f.read_text().replace("    access_level: ref_protected\n", "    access_level: not_protected\n", 1))
    code, out = _validate(repo_copy)
    assert code == 1 and "runners.deploy" in out and "ref_protected" in out
    f.write_text(f.read_text().replace("    type: project\n    owner: ni-dataops/bidsflux\n    locked: true\n    access_level: not_protected\n",
                                       "    type: instance\n", 1))
    code, out = _validate(repo_copy)
    assert code == 1 and "Docker socket" in out and "runners.deploy.type" in out


def test_untagged_runner_must_run_untagged_jobs(repo_copy: Path) -> None:
    f = repo_copy / "stack" / "runners.yml"
    f.write_text(f.read_text().replace("    tags: []\n    run_untagged: true\n", "    tags: []\n    run_untagged: false\n"))
    code, out = _validate(repo_copy)
    assert code == 1 and "runners.processing-untagged.tags" in out and "Tags list can not be empty" in out


def test_owner_must_be_in_gitlab_yml(repo_copy: Path) -> None:
    f = repo_copy / "stack" / "runners.yml"
    f.write_text(f.read_text().replace("    owner: ni-dataops\n    service: gitlab-runner\n    tags: [docker-build]",
                                       "    owner: nowhere\n    service: gitlab-runner\n    tags: [docker-build]"))
    code, out = _validate(repo_copy)
    assert code == 1 and "runners.build.owner" in out and "nowhere" in out


def test_gitlab_edition_version_and_runner_version_are_one_choice(repo_copy: Path) -> None:
    site = repo_copy / "stack" / "site.yml"
    text = site.read_text()
    assert "gitlab/gitlab-ee:17.7." in text and "gitlab-runner:alpine-v17.7." in text  # the seed's sites' choice
    site.write_text(text.replace("gitlab-runner:alpine-v17.7.1", "gitlab-runner:alpine-v17.11.0"))
    code, out = _validate(repo_copy)
    assert code == 1 and "images.gitlab_runner" in out and "runner 17.11 with GitLab 17.7" in out
    site.write_text(text.replace("gitlab/gitlab-ee:17.7.1-ee.0", "gitlab/gitlab-ee:17.7.1-ce.0"))
    code, out = _validate(repo_copy)
    assert code == 1 and "images.gitlab" in out and "edition ee with a -ce tag" in out
