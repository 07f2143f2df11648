"""`bidsflux validate`'s GitLab rules for stack/runners.yml: runner scope vs host access, GitLab's tag rule, versions.

Following GitLab's runner security guidance (docs.gitlab.com/runner/security/, "Security for
self-managed runners"; doc/ci/docker/using_docker_build.md "Known issues with Docker socket
binding"): a job on a runner with the host's Docker socket, privileged containers or host-escalating
options is root on the host. An instance runner takes jobs from every project of the instance, so
such a runner must be a group or project runner; the one with the Docker socket deploys, so it is
a locked project runner that runs protected refs only."""

from __future__ import annotations

import re
from typing import Any

from bidsflux.diagnostics import Diagnostic
from bidsflux.site.yamlsource import Document, load

DOCKER_SOCKET = "/var/run/docker.sock"
ESCALATING_CAPS = {"SYS_ADMIN", "ALL", "SYS_MODULE", "SYS_PTRACE", "NET_ADMIN", "SYS_RAWIO", "DAC_READ_SEARCH"}
GITLAB_IMAGE = re.compile(r"gitlab/gitlab-(ee|ce):(\d+)\.(\d+)\.\d+-(ee|ce)\.\d+$")
RUNNER_IMAGE = re.compile(r"gitlab-runner:(?:[a-z0-9]+-)?v(\d+)\.(\d+)\.\d+$")


def host_access(spec: dict[str, Any]) -> list[str]:
    """What in a runner's docker settings gives a job the host (empty: nothing)."""
    d = spec.get("docker") or {}
    found = []
    if d.get("privileged"):
        found.append("privileged job containers")
    mounts = [str(m).split(":")[0] for m in d.get("mounts") or []]
    if "docker_socket" in mounts or any(str(v).split(":")[0] in (DOCKER_SOCKET, "/run/docker.sock")
                                        for v in d.get("volumes") or []):
        found.append(f"the host's Docker socket ({DOCKER_SOCKET})")
    caps = sorted(set(d.get("cap_add") or []) & ESCALATING_CAPS)
    if caps:
        found.append(f"capabilities {', '.join(caps)}")
    if d.get("devices"):
        found.append(f"host devices {', '.join(d['devices'])}")
    unconfined = [o for o in d.get("security_opt") or [] if "unconfined" in str(o)]
    if unconfined:
        found.append(f"security options {', '.join(unconfined)}")
    if spec.get("executor") == "shell":
        found.append("the shell executor")
    return found


def check_runners_file(runners: Document, site: Document, template: Document | None) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    gitlab_doc = _gitlab_doc(runners)
    groups = set((gitlab_doc.get("groups") or {}).keys())
    projects = set((gitlab_doc.get("projects") or {}).keys())
    for name, spec in (runners.data.get("runners") or {}).items():
        key = ["runners", name]
        rtype = spec.get("type", "instance")
        if not spec.get("tags") and not spec.get("run_untagged", False):
            # app/models/ci/runner.rb tag_constraints: GitLab refuses to create it (400).
            out.append(runners.diagnostic([*key, "tags"], "GitLab refuses a runner without tags unless run_untagged "
                                          "is true (\"Tags list can not be empty when runner is not allowed to pick "
                                          "untagged jobs\")"))
        risky = host_access(spec)
        if rtype == "instance" and risky:
            out.append(runners.diagnostic([*key, "type"], f"an instance runner takes jobs from every project, and this "
                                          f"one gives them {'; '.join(risky)} (root on the host): make it a group or "
                                          "project runner (type, owner)"))
        if rtype == "group" and spec.get("owner") not in groups:
            out.append(runners.diagnostic([*key, "owner"], f"group runner owner '{spec.get('owner')}' is not a group "
                                          "of stack/gitlab.yml"))
        if rtype == "project" and spec.get("owner") not in projects:
            out.append(runners.diagnostic([*key, "owner"], f"project runner owner '{spec.get('owner')}' is not a "
                                          "project of stack/gitlab.yml"))
        if rtype == "instance" and spec.get("owner"):
            out.append(runners.diagnostic([*key, "owner"], "an instance runner has no owner"))
        d = spec.get("docker") or {}
        socket = "docker_socket" in [str(m).split(":")[0] for m in d.get("mounts") or []] or any(
            str(v).split(":")[0] == DOCKER_SOCKET for v in d.get("volumes") or [])
        if socket and not (rtype == "project" and spec.get("locked") and spec.get("access_level") == "ref_protected"):
            out.append(runners.diagnostic(key, "a runner with the host's Docker socket deploys: it must be a project "
                                          "runner, locked: true, access_level: ref_protected (protected refs only)"))
        out += _readonly_api_checks(runners, name, spec, site, template)
    out += _version_checks(site)
    return out


def _readonly_api_checks(runners: Document, name: str, spec: dict[str, Any], site: Document,
                         template: Document | None) -> list[Diagnostic]:
    """A runner with the read-only Docker API finds its socket only on a node that runs the
    docker-readonly service: the host's Docker makes the job containers on the node of the
    runner's service, so both must share a role. A hand-written socket volume must be that socket."""
    from bidsflux.gitlab.runners import READONLY_SERVICE, readonly_socket

    d = spec.get("docker") or {}
    out = []
    data = site.data or {}
    try:
        socket = readonly_socket(data)
    except (KeyError, TypeError):
        return out  # site.yml's schema problems are reported on their own
    for i, v in enumerate(d.get("volumes") or []):
        parts = str(v).split(":")
        if len(parts) > 1 and parts[1] in (DOCKER_SOCKET, "/run/docker.sock") and parts[0] not in (DOCKER_SOCKET, "/run/docker.sock") \
                and parts[0] != socket:
            out.append(runners.diagnostic(["runners", name, "docker", "volumes", i], f"{parts[0]} is not a Docker socket "
                                          f"the stack provides: the read-only Docker API listens at {socket} "
                                          "(paths.docker_readonly in site.yml); use the mount docker_readonly"))
    wants = "docker_readonly" in [str(m).split(":")[0] for m in d.get("mounts") or []] or socket in [
        str(v).split(":")[0] for v in d.get("volumes") or []]
    if not wants:
        return out
    services = (template.data.get("services") or {}) if template is not None and isinstance(template.data, dict) else None
    if services is not None and READONLY_SERVICE not in services:
        out.append(runners.diagnostic(["runners", name, "docker"], f"its jobs get the read-only Docker API, but "
                                      f"stack/bidsflux.stack.yml has no service {READONLY_SERVICE} to serve it"))
        return out
    role_of = {svc: role for role, svcs in (data.get("roles") or {}).items() for svc in svcs or []}
    mine, proxy = role_of.get(spec.get("service")), role_of.get(READONLY_SERVICE)
    if mine != proxy:
        out.append(runners.diagnostic(["runners", name, "service"], f"its jobs run on the node of {spec.get('service')} "
                                      f"(role {mine or 'none'}), but {READONLY_SERVICE}, which makes their Docker socket "
                                      f"{socket}, is on role {proxy or 'none'}: put both on one role in site.yml roles"))
    return out


def _version_checks(site: Document) -> list[Diagnostic]:
    """GitLab edition and version are one choice (images.gitlab); the runner follows its major.minor
    (docs.gitlab.com/runner "GitLab Runner versions": keep major.minor in sync)."""
    images = (site.data or {}).get("images") or {}
    gl, runner = GITLAB_IMAGE.search(str(images.get("gitlab", ""))), RUNNER_IMAGE.search(str(images.get("gitlab_runner", "")))
    out = []
    # Images that do not look like GitLab's (a mirror with other names, test stand-ins) are not judged.
    if gl and gl.group(1) != gl.group(4):
        out.append(site.diagnostic(["images", "gitlab"], f"edition {gl.group(1)} with a -{gl.group(4)} tag"))
    if gl and runner and (gl.group(2), gl.group(3)) != (runner.group(1), runner.group(2)):
        out.append(site.diagnostic(["images", "gitlab_runner"],
                                   f"runner {runner.group(1)}.{runner.group(2)} with GitLab {gl.group(2)}.{gl.group(3)}: "
                                   "use the runner of GitLab's major.minor"))
    return out


def _gitlab_doc(runners: Document) -> dict[str, Any]:
    path = runners.path.parent / "gitlab.yml"
    try:
        return load(path, path.parent.parent).data or {}
    except Exception:  # noqa: BLE001 - gitlab.yml's own problems are reported by its own checks
        return {}
