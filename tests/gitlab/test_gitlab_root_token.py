"""`bidsflux gitlab root-token`'s mint step through a real container and docker exec.

GitLab's image cannot be pulled here, so the container holds a STAND-IN `gitlab-rails` script
(busybox sh, FROM scratch): it records the arguments it gets and asks the emulator's test hook to
do what the real Ruby would do in GitLab's database. What is real: the container, docker-py's
exec with the token in the exec environment, the lookup of the GitLab task by its swarm service
label, and the token then working (and being revoked) over GitLab's REST API."""

from __future__ import annotations

import io
import os
import tarfile
import uuid

import gitlab
import pytest

from bidsflux.gitlab.root_token import find_gitlab_container, root_token

IMAGE = "bidsflux-test/gitlab-rails-standin:2"
STANDIN = """#!/bin/busybox sh
# STAND-IN for GitLab's gitlab-rails (tests only): record the arguments, then ask the emulator to do
# what the Ruby code would do in GitLab's database.
B=/bin/busybox
$B mkdir -p /tmp
for a in "$@"; do echo "$a" >> /tmp/rails-args; done
echo "--" >> /tmp/rails-args
case "$2" in
  *set_token*) $B wget -q -O - --post-data "user=$BIDSFLUX_ROOT_USER&name=$BIDSFLUX_TOKEN_NAME&scopes=$BIDSFLUX_TOKEN_SCOPES&days=$BIDSFLUX_TOKEN_DAYS&token=$BIDSFLUX_TOKEN" "$EMULATOR_URL/-/emulator/rails/mint" ;;
  *revoke!*) $B wget -q -O - --post-data "name=$BIDSFLUX_TOKEN_NAME&id=$BIDSFLUX_TOKEN_ID" "$EMULATOR_URL/-/emulator/rails/revoke" ;;
  *) echo "stand-in: unknown script" >&2; exit 1 ;;
esac
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def standin_image(swarm_client_module):  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        # busybox applets (sh, wget) stand in for the omnibus image's shell and curl (readiness probe).
        _add(tar, "Dockerfile", b"FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
                                b"COPY gitlab-rails /usr/bin/gitlab-rails\n"
                                b"ENTRYPOINT [\"/bin/busybox\", \"sleep\", \"600\"]\n", 0o644)
        with open("/bin/busybox", "rb") as fh:
            _add(tar, "busybox", fh.read())
        _add(tar, "gitlab-rails", STANDIN.encode())
    buf.seek(0)
    swarm_client_module.images.build(fileobj=buf, custom_context=True, tag=IMAGE, rm=True)
    return IMAGE


@pytest.fixture(scope="module")
def swarm_client_module():  # type: ignore[no-untyped-def]
    from support import require

    require(os.path.exists("/bin/busybox"), "needs /bin/busybox (Debian package busybox-static)")
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception:  # noqa: BLE001
        client = None
    require(client is not None, "needs a Docker engine")
    return client


@pytest.mark.integration
def test_root_token_minted_in_gitlab_task_and_revoked(gitlab_emulator, standin_image, swarm_client_module) -> None:  # type: ignore[no-untyped-def]
    client = swarm_client_module
    stack = "bfrt" + uuid.uuid4().hex[:8]
    container = client.containers.run(standin_image, detach=True, network_mode="host", name=f"{stack}-gitlab",
                                      environment={"EMULATOR_URL": gitlab_emulator.url},
                                      labels={"com.docker.swarm.service.name": f"{stack}_gitlab"})
    # Another administrator's token with the same name, kept on purpose: never ours to revoke (fault 9).
    kept = gitlab_emulator.create_token("root", ["api"], name="bidsflux-bootstrap")
    try:
        found = find_gitlab_container(client, stack)
        assert found.id == container.id
        with root_token(found) as tok:
            assert tok.value.startswith("glpat-") and tok.value not in repr(tok) and tok.value not in str(tok)
            gl = gitlab.Gitlab(gitlab_emulator.url, private_token=tok.value)
            gl.auth()
            assert gl.user.is_admin and gl.personal_access_tokens.get("self").name == "bidsflux-bootstrap"
        with pytest.raises(gitlab.GitlabAuthenticationError):
            gitlab.Gitlab(gitlab_emulator.url, private_token=tok.value).auth()
        assert gitlab_emulator.token_record(kept).active()  # only the token this run minted was revoked
        args = container.exec_run(["/bin/busybox", "cat", "/tmp/rails-args"]).output.decode()
        calls = [c.strip().splitlines() for c in args.split("--") if c.strip()]
        assert [c[0] for c in calls] == ["runner", "runner"]
        assert tok.value not in args  # the token travels in the exec environment, not on the command line
    finally:
        container.remove(force=True)
