"""The read-only Docker API in the site files: the docker-readonly service as rendered (placed with
the plan runner's service, config by content hash), the runner mount that reaches its socket, and
the validate rules that keep both on one node."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from support import REPO_ROOT, cli, edit_text, edit_yaml, validate_problems


def _render(repo: Path) -> dict[str, Any]:
    result = cli("render", "--root", str(repo), "--secret-versions", "initial")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def _site(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / "stack/site.yml").read_text())


def test_service_runs_the_shipped_config_on_the_plan_runners_node() -> None:
    stack, site = _render(REPO_ROOT), _site(REPO_ROOT)
    svc = stack["services"]["docker-readonly"]
    assert svc["image"] == site["images"]["haproxy"]
    runners = yaml.safe_load((REPO_ROOT / "stack/runners.yml").read_text())["runners"]
    runner_service = stack["services"][runners["plan"]["service"]]
    assert svc["deploy"]["placement"]["constraints"] == runner_service["deploy"]["placement"]["constraints"]
    mounts = {v["target"]: v["source"] for v in svc["volumes"]}
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert mounts["/run/bidsflux-docker-ro"] == site["paths"]["docker_readonly"]["path"]
    # The config object is named by the content of stack/docker-readonly.haproxy.cfg.
    import hashlib

    data = (REPO_ROOT / "stack/docker-readonly.haproxy.cfg").read_bytes()
    ref = svc["configs"][0]
    assert ref["target"] == "/usr/local/etc/haproxy/haproxy.cfg"
    assert stack["configs"][ref["source"]] == {
        "external": True, "name": f"bidsflux_docker_readonly_haproxy_{hashlib.sha256(data).hexdigest()[:12]}"}
    # The config listens where the bind mount of paths.docker_readonly lands in the container.
    assert re.search(r"bind unix@/run/bidsflux-docker-ro/docker\.sock mode 600\b", data.decode())


def test_an_edited_config_gets_a_new_name(repo_copy: Path) -> None:
    before = _render(repo_copy)["configs"]["docker_readonly_haproxy"]["name"]
    edit_text(repo_copy, "stack/docker-readonly.haproxy.cfg", "maxconn 64", "maxconn 32")
    after = _render(repo_copy)["configs"]["docker_readonly_haproxy"]["name"]
    assert before != after and after.startswith("bidsflux_docker_readonly_haproxy_")


def test_plan_runner_mount_is_the_services_socket(repo_copy: Path) -> None:
    from bidsflux.gitlab.runners import runner_specs

    edit_yaml(repo_copy / "stack/site.yml", lambda d: d["paths"]["docker_readonly"].update(path="/srv/x/ro"))
    site = _site(repo_copy)
    specs = {s.name: s for s in runner_specs(yaml.safe_load((repo_copy / "stack/runners.yml").read_text()), site)}
    assert "/srv/x/ro/docker.sock:/var/run/docker.sock" in specs["plan"].docker["volumes"]
    assert not any(v.startswith("/var/run/docker.sock") for v in specs["plan"].docker["volumes"])
    assert _render(repo_copy)["services"]["docker-readonly"]["volumes"][1]["source"] == "/srv/x/ro"
    assert validate_problems(repo_copy) == []


def _messages(problems: list[dict]) -> str:
    return "\n".join(f"{p['file']}:{p['line']} {p['key']}: {p['message']}" for p in problems)


def test_validate_refuses_the_proxy_on_another_role_than_the_plan_runner(repo_copy: Path) -> None:
    def move(d: Any) -> None:
        d["roles"]["data"].remove("docker-readonly")
        d["roles"]["processing"].append("docker-readonly")

    edit_yaml(repo_copy / "stack/site.yml", move)
    out = _messages(validate_problems(repo_copy))
    assert "runners.plan.service" in out and "role data" in out and "role processing" in out, out


def test_validate_refuses_a_hand_written_socket_that_is_not_the_proxys(repo_copy: Path) -> None:
    edit_text(repo_copy, "stack/runners.yml", 'mounts: [docker_readonly, "mercure_config:ro"]\n      volumes: [/cache]',
              'mounts: ["mercure_config:ro"]\n      volumes: [/run/bidsflux-docker-ro/docker.sock:/var/run/docker.sock, /cache]')
    out = _messages(validate_problems(repo_copy))
    assert "runners.plan.docker.volumes[0]" in out and "/srv/bidsflux/docker-readonly/docker.sock" in out, out
    assert "stack/runners.yml:" in out


def test_validate_refuses_the_mount_without_the_service(repo_copy: Path) -> None:
    edit_text(repo_copy, "stack/bidsflux.stack.yml", "  docker-readonly:\n", "  docker-readonly-gone:\n")
    edit_yaml(repo_copy / "stack/site.yml", lambda d: d["roles"]["data"].remove("docker-readonly"))
    edit_yaml(repo_copy / "stack/site.yml", lambda d: d["roles"]["data"].append("docker-readonly-gone"))
    out = _messages(validate_problems(repo_copy))
    assert "runners.plan.docker" in out and "no service docker-readonly" in out, out


def test_validate_refuses_a_config_file_that_is_missing(repo_copy: Path) -> None:
    (repo_copy / "stack/docker-readonly.haproxy.cfg").unlink()
    out = _messages(validate_problems(repo_copy))
    assert "stack/bidsflux.stack.yml" in out and "cannot read docker-readonly.haproxy.cfg" in out, out


def test_plan_compares_configs_and_user_and_creates_missing_configs() -> None:
    from bidsflux.site.render import render_stack
    from bidsflux.site.yamlsource import load
    from bidsflux.swarm.plan import ObservedState, desired, diff

    site = load(REPO_ROOT / "stack/site.yml").data
    rendered = render_stack(site, load(REPO_ROOT / "stack/bidsflux.stack.yml"))
    want = desired(rendered, site)
    name = rendered.configs["docker_readonly_haproxy"].name
    svc = want.services["bidsflux_docker-readonly"]
    assert svc["configs"] == [f"{name} -> /usr/local/etc/haproxy/haproxy.cfg (0444)"] and svc["user"] == "root"
    live = ObservedState("bidsflux", {}, {}, None, {}, 1, {}, [], set())
    creates = [c for c in diff(want, live).changes if c.kind == "config"]
    assert [(c.action, c.name) for c in creates] == [("create", name)]
    live.configs = {name}
    assert not [c for c in diff(want, live).changes if c.kind == "config"]
