"""Versioned docker secrets owned by bidsflux: naming, labels and the current versions.

Docker secrets are immutable, so every value lives in its own object named
<stack>_<logical>_v<N> and labelled as ours; the highest version present is the current one."""

from __future__ import annotations

from .diagnostics import UserError

LABEL_MANAGED = "io.bidsflux.managed"
LABEL_STACK = "io.bidsflux.stack"
LABEL_SECRET = "io.bidsflux.secret"
LABEL_VERSION = "io.bidsflux.version"


def docker_client():  # type: ignore[no-untyped-def]
    """docker-py client from the environment; an unreachable engine is a UserError with the fix."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except DockerException as exc:
        raise UserError(
            f"cannot reach the Docker engine ({str(exc).splitlines()[0][:200]}); start it "
            "(systemctl start docker, or dockerd) or set DOCKER_HOST"
        ) from None
    return client


def live_versions(stack: str) -> dict[str, int]:
    """Highest version of each logical secret of `stack` present in the swarm."""
    from docker.errors import APIError

    client = docker_client()
    try:
        secrets = client.secrets.list(filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_STACK}={stack}"]})
    except APIError as exc:
        raise UserError(f"cannot list swarm secrets: {exc.explanation or exc}; is this node a swarm manager?") from None
    versions: dict[str, int] = {}
    for s in secrets:
        labels = s.attrs.get("Spec", {}).get("Labels", {}) or {}
        try:
            logical, version = labels[LABEL_SECRET], int(labels[LABEL_VERSION])
        except (KeyError, ValueError):
            continue
        versions[logical] = max(version, versions.get(logical, 0))
    return versions
