"""Bot token rotation and runner registration against the emulator (real swarm secrets)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import gitlab
import pytest

from bidsflux.gitlab.objects import connect, desired
from bidsflux.gitlab.runners import SecretSink, config_secrets, register, runner_specs
from bidsflux.gitlab.tokens import RotationUnknown, TokenStore, rotate_token
from bidsflux.site.yamlsource import load
from support import REPO_ROOT, cli


def bot_spec(key: str = "bids_bot"):  # type: ignore[no-untyped-def]
    doc = load(REPO_ROOT / "stack" / "gitlab.yml").data
    site = load(REPO_ROOT / "stack" / "site.yml").data
    return next(u for u in desired(doc, site).users if u.key == key)


def setup_bot(emu, tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = bot_spec()
    gl = connect(emu.url, emu.admin_token)
    gl.users.create({"username": spec.username, "name": spec.name, "email": spec.email, "force_random_password": True})
    store = TokenStore(gl, "unused", str(tmp_path / "secrets.env"))
    from bidsflux.gitlab.tokens import create_token

    create_token(gl, spec, store)
    return gl, spec, store


def test_rotation_stores_new_value_first_and_old_token_is_refused(gitlab_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gl, spec, store = setup_bot(gitlab_emulator, tmp_path)
    old = gl.variables.get(spec.token.variable).value
    where = rotate_token(gl, spec, store)
    new = gl.variables.get(spec.token.variable).value
    assert new != old and new.startswith("glpat-")
    assert where[0].startswith("values file") and where[-1] == f"CI variable {spec.token.variable}"
    assert new in (tmp_path / "secrets.env").read_text() and old not in (tmp_path / "secrets.env").read_text()
    gitlab.Gitlab(gitlab_emulator.url, private_token=new).auth()  # the stored value works
    with pytest.raises(gitlab.GitlabAuthenticationError):
        gitlab.Gitlab(gitlab_emulator.url, private_token=old).auth()  # the replayed old one is refused


def test_ambiguous_rotation_is_not_retried(gitlab_emulator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gl, spec, store = setup_bot(gitlab_emulator, tmp_path)
    before = gl.variables.get(spec.token.variable).value
    gitlab_emulator.fail_requests(r"^POST /personal_access_tokens/\d+/rotate$", 502, times=5)
    mark = gitlab_emulator.mark()
    with pytest.raises(RotationUnknown) as err:
        rotate_token(gl, spec, store)
    rotations = [r for r in gitlab_emulator.requests_since(mark) if r.path.endswith("/rotate")]
    assert len(rotations) == 1  # sent once, never again
    assert "NOT retried" in str(err.value) and before not in str(err.value)
    assert gl.variables.get(spec.token.variable).value == before


def test_tokens_rotate_cli_never_prints_values(gitlab_emulator, repo_copy: Path) -> None:  # type: ignore[no-untyped-def]
    site = repo_copy / "stack" / "site.yml"
    site.write_text(site.read_text().replace("/var/lib/bidsflux/secrets.env", str(repo_copy / "secrets.env")))
    env = {"BIDSFLUX_GITLAB_URL": gitlab_emulator.url, "BIDSFLUX_GITLAB_TOKEN": gitlab_emulator.admin_token}
    gl = gitlab.Gitlab(gitlab_emulator.url, private_token=gitlab_emulator.admin_token)
    spec = bot_spec()
    gl.users.create({"username": spec.username, "name": spec.name, "email": spec.email, "force_random_password": True})
    first = cli("gitlab", "tokens", "rotate", "bids_bot", "--root", str(repo_copy), env=env)  # no token yet: created
    second = cli("gitlab", "tokens", "rotate", "bids_bot", "--root", str(repo_copy), env=env)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    value = gl.variables.get("BIDS_BOT_GITLAB_TOKEN").value
    assert "glpat-" not in first.output + second.output and value not in second.output
    assert gitlab_emulator.admin_token not in first.output + second.output
    bad = cli("gitlab", "tokens", "rotate", "nobody", "--root", str(repo_copy), env=env)
    assert bad.exit_code == 1 and "nobody" in bad.output


FLEET = {"deploy", "mercure", "plan", "build", "processing", "processing-fuse", "processing-untagged"}


def _owners(gl) -> None:  # type: ignore[no-untyped-def]
    """The group and project runners.yml scopes runners to (gitlab.yml creates them on a site)."""
    group = gl.groups.create({"name": "NI", "path": "ni-dataops"})
    gl.projects.create({"name": "bidsflux", "namespace_id": group.id})


class RecordingSink(SecretSink):
    """Real docker secrets; also keeps the text written, since a swarm secret cannot be read back."""

    def __init__(self, *a, **k) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **k)
        self.texts: dict[str, str] = {}

    def write(self, logical: str, text: str, labels: dict[str, str] | None = None) -> tuple[str, str]:
        name, sid = super().write(logical, text, labels)
        self.texts[name] = text
        return name, sid


@pytest.mark.integration
def test_runners_register_replace_and_prune(gitlab_emulator, site_repo, swarm_client) -> None:  # type: ignore[no-untyped-def]
    root, stack = site_repo
    site = load(root / "stack" / "site.yml").data
    specs = runner_specs(load(root / "stack" / "runners.yml").data, site)
    secrets = config_secrets(load(root / "stack" / "bidsflux.stack.yml").data)
    gl = connect(gitlab_emulator.url, gitlab_emulator.admin_token)
    _owners(gl)
    stray = gl.user.runners.create({"runner_type": "instance_type", "description": "old-hand-registered"})
    sink = RecordingSink(stack, lambda: swarm_client)
    first = register(gl, specs, secrets, "http://gitlab.localhost", sink)
    assert set(first.registered) == FLEET
    assert first.deleted == [stray.id] and sorted(first.not_deployed) == ["gitlab-runner", "gitlab-runner-dind"]
    processing = tomllib.loads(sink.texts[first.configs["gitlab-runner"]])
    by_name = {r["name"]: r for r in processing["runners"]}
    assert set(by_name) == {"build", "processing", "processing-fuse", "processing-untagged"}
    assert processing["listen_address"] == "127.0.0.1:9252"
    p = by_name["processing"]
    assert p["url"] == "http://gitlab.localhost" and p["executor"] == "docker" and p["limit"] == 4
    assert gitlab_emulator.runner_by_token(p["token"]).tag_list == ["bids", "processing"]
    fuse = gitlab_emulator.runner_by_token(by_name["processing-fuse"]["token"])
    assert fuse.runner_type == "group_type" and fuse.group_id == gl.groups.get("ni-dataops").id
    assert by_name["processing-fuse"]["docker"]["cap_add"] == ["SYS_ADMIN"]
    dind = {r["name"]: r for r in tomllib.loads(sink.texts[first.configs["gitlab-runner-dind"]])["runners"]}
    deploy = gitlab_emulator.runner_by_token(dind["deploy"]["token"])
    # The runner with the host's Docker socket: the bidsflux project's, locked, protected refs only.
    assert (deploy.runner_type, deploy.project_id, deploy.locked, deploy.access_level) == (
        "project_type", gl.projects.get("ni-dataops/bidsflux").id, True, "ref_protected")
    assert "/var/run/docker.sock:/var/run/docker.sock" in dind["deploy"]["docker"]["volumes"]
    assert dind["deploy"]["docker"]["privileged"] is False
    # Each runner's jobs get what runners.yml `mounts` names, at the host's own path.
    state, values = site["paths"]["state_dir"]["path"], site["secrets"]["file"]
    values_dir = values.rsplit("/", 1)[0]
    extra = [] if values_dir.startswith(state) else [f"{values_dir}:{values_dir}"]  # the values file's own folder
    mercure_config = site["paths"]["mercure_base"]["path"] + "/config"
    assert dind["deploy"]["docker"]["volumes"][:2 + len(extra)] == [
        "/var/run/docker.sock:/var/run/docker.sock", f"{state}:{state}", *extra]
    assert dind["mercure"]["docker"]["volumes"][:2] == ["/var/run/docker.sock:/var/run/docker.sock",
                                                       f"{mercure_config}:{mercure_config}"]
    assert f"{mercure_config}:{mercure_config}:ro" in dind["plan"]["docker"]["volumes"]
    assert not any(v.startswith(("/var/run/docker.sock", state)) for v in dind["plan"]["docker"]["volumes"])
    assert gitlab_emulator.runner_by_token(dind["plan"]["token"]).access_level == "not_protected"
    assert not any(v.startswith("/var/run/docker.sock") for v in dind["plan"]["docker"]["volumes"])
    # Re-registering replaces: exactly one runner per entry, the new ones, in new secret versions.
    second = register(gl, specs, secrets, "http://gitlab.localhost", sink)
    live = {r.description: r.id for r in gl.runners_all.list(get_all=True)}
    assert len(gl.runners_all.list(get_all=True)) == len(FLEET)
    assert live == second.registered and sorted(second.deleted) == sorted(first.registered.values())
    assert second.configs["gitlab-runner"].endswith("_v2")
    names = {s.name for s in swarm_client.secrets.list(filters={"label": f"io.bidsflux.stack={stack}"})}
    assert f"{stack}_runner_processing_config_v2" in names
    # A failure while creating leaves no orphan runner behind.
    gitlab_emulator.fail_requests(r"^POST /user/runners$", 500, times=1)
    with pytest.raises(Exception):  # noqa: B017 - the UserError message is checked by the CLI tests
        register(gl, specs, secrets, "http://gitlab.localhost", sink, only={"processing"})
    assert {r.id for r in gl.runners_all.list(get_all=True)} == set(second.registered.values())


@pytest.mark.integration
def test_register_failing_part_way_keeps_switched_services_live(gitlab_emulator, site_repo, swarm_client) -> None:  # type: ignore[no-untyped-def]
    """Fault 11: services already switched to their new config keep the runners whose tokens it holds."""
    root, stack = site_repo
    site = load(root / "stack" / "site.yml").data
    specs = runner_specs(load(root / "stack" / "runners.yml").data, site)
    secrets = config_secrets(load(root / "stack" / "bidsflux.stack.yml").data)
    gl = connect(gitlab_emulator.url, gitlab_emulator.admin_token)
    _owners(gl)
    sink = RecordingSink(stack, lambda: swarm_client)
    # Services go in name order: gitlab-runner (4 runners) is stored, then gitlab-runner-dind's 2nd runner fails.
    created: list[int] = []
    orig = gl.user.runners.create

    def flaky(data, **kw):  # type: ignore[no-untyped-def]
        if len(created) == 5:
            gitlab_emulator.fail_requests(r"^POST /user/runners$", 500, times=1)
        r = orig(data, **kw)
        created.append(r.id)
        return r

    gl.user.runners.create = flaky  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017
        register(gl, specs, secrets, "http://gitlab.localhost", sink)
    stored = tomllib.loads(next(t for n, t in sink.texts.items() if "processing" in n))
    for entry in stored["runners"]:  # every token in the stored config is a live runner
        assert gitlab_emulator.runner_by_token(entry["token"]) is not None, entry["name"]
    assert {r.description for r in gl.runners_all.list(get_all=True)} == {
        "build", "processing", "processing-fuse", "processing-untagged"}
