"""Secret ages against secrets.rotation_days, with real labelled swarm secrets and the clock moved
forward (a test cannot wait a day)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bidsflux.health import checks as health
from bidsflux.swarm.secretstore import LABEL_MANAGED, LABEL_SECRET, LABEL_STACK, LABEL_VERSION
from support import require

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_secrets() -> Iterator[str]:
    import docker

    try:
        client = docker.from_env()
        swarm = client.info().get("Swarm") or {}
    except docker.errors.DockerException as exc:
        require(False, f"no Docker engine: {exc}")
    require(swarm.get("ControlAvailable") is True, "the Docker engine is not a swarm manager")
    stack = f"bfxage{uuid.uuid4().hex[:6]}"
    made = [
        client.secrets.create(name=f"{stack}_s3_id_v{v}", data=b"not-a-real-key",
                              labels={LABEL_MANAGED: "true", LABEL_STACK: stack, LABEL_SECRET: "s3_id", LABEL_VERSION: str(v)})
        for v in (1, 2)
    ]
    try:
        yield stack
    finally:
        for s in made:
            client.api.remove_secret(s.id)


def expiry(site_copy: Callable[..., Path], stack: str, days_ahead: int, monkeypatch: pytest.MonkeyPatch) -> health.Result:
    site = site_copy(lambda d: (d["site"].__setitem__("name", stack), d["secrets"].__setitem__("rotation_days", 180)))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_ahead)
    for module in ("bidsflux.health.context", "bidsflux.health.expiry"):
        monkeypatch.setattr(f"{module}.utcnow", lambda: later)
    # No GitLab here: point it at a closed port so the token part ends at once.
    ctx = health.load_context(str(site), None, {"gitlab": "http://127.0.0.1:9"}, None, 5.0, env={})
    (result,) = health.run_checks(health.select(["expiry"]), ctx)
    return result


def test_secret_past_rotation_policy_warns_with_the_rotate_command(
        site_copy: Callable[..., Path], stack_secrets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = expiry(site_copy, stack_secrets, 200, monkeypatch)
    old = [d for d in result.details if "secret s3_id (v2) is 200 days old (rotation policy 180 days)" in d]
    assert old and "bidsflux secrets rotate s3_id" in old[0], result


def test_young_secret_is_fine(site_copy: Callable[..., Path], stack_secrets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = expiry(site_copy, stack_secrets, 10, monkeypatch)
    assert not any("secret s3_id" in d for d in result.details), result
