"""`bidsflux canary` through the real data path (see conftest.py): it passes when every link works,
and names the broken link when one is cut: S3 refusing the indexer's key (annex), GitLab refusing
the indexer's SSH key (push), storescp down (send)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from junitparser import JUnitXml

from support import cli

pytestmark = pytest.mark.integration


def canary(world: Any, port: int, tmp: Path, timeout: int, s3_secret: str | None = None) -> tuple[int, dict, Path]:
    junit = tmp / f"canary-{port}.xml"
    result = cli("canary", "--root", str(world.repo), "--timeout", str(timeout), "--format", "json",
                 "--junit", str(junit), env=world.env(port, s3_secret))
    assert world.token not in result.output and world.s3_keys[1] not in result.output
    return result.exit_code, json.loads(result.output), junit


def _s3_objects(world: Any) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=world.s3_url, aws_access_key_id=world.s3_keys[0],
                      aws_secret_access_key=world.s3_keys[1], region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket="dicoms").get("Contents", [])]


def test_canary_passes_through_the_real_data_path(world: Any, tmp_path: Path) -> None:
    container, port = world.start_endpoint()
    mark = world.emulator.mark()
    code, report, junit = canary(world, port, tmp_path, timeout=120)
    logs = container.logs().decode(errors="replace")
    assert code == 0, (report, logs[-4000:])
    assert report["checks"][0]["status"] == "ok"
    assert report["project"].startswith("bidsflux-canary/canary/sourcedata/dicoms/")
    details = "\n".join(report["checks"][0]["details"])
    assert "annex: ok" in details and "checksums match" in details
    # The indexer followed the upstream contract: its key registered with a multipart POST over
    # HTTPS (through Caddy), git over SSH checked by gitlab-shell's internal API, the push recorded.
    seen = [(r.method, r.path, r.status, r.user) for r in world.emulator.requests_since(0)]
    assert ("POST", "/user/keys", 201, "dicom_bot") in seen, seen
    after = [(r.method, r.path, r.status) for r in world.emulator.requests_since(mark)]
    assert ("POST", "/internal/allowed", 200) in after and ("POST", "/internal/post_receive", 200) in after
    assert "registering the ssh key" in logs
    # The canary removed what it made: its group in GitLab and its objects in S3.
    assert not any(p["path_with_namespace"].startswith("bidsflux-canary") for p in world.emulator.state.projects.values())
    assert _s3_objects(world) == []
    cases = {c.name: c for suite in JUnitXml.fromfile(str(junit)) for c in suite}
    assert list(cases) == ["send", "index", "push", "annex"] and all(c.is_passed for c in cases.values())


def test_wrong_s3_key_fails_at_annex(world: Any, tmp_path: Path) -> None:
    # s3_secret rotated in the secret store but MinIO (here SeaweedFS) never told: both the
    # indexer and the canary hold a key S3 refuses.
    wrong = "sk-not-known-to-s3-000000"
    _, port = world.start_endpoint(s3_secret=wrong)
    code, report, junit = canary(world, port, tmp_path, timeout=20, s3_secret=wrong)
    check = report["checks"][0]
    assert code == 1 and check["status"] == "fail" and check["reason"].startswith("annex: S3 refuses"), check
    assert "bidsflux s3 apply" in check["fix"]
    assert wrong not in json.dumps(report)
    cases = {c.name: c for suite in JUnitXml.fromfile(str(junit)) for c in suite}
    assert cases["send"].is_passed and not cases["annex"].is_passed


def test_refused_ssh_key_fails_at_push(world: Any, tmp_path: Path) -> None:
    # GitLab refuses the key the indexer registers (an admin forbade RSA keys): the API still
    # works, so the project exists, but nothing can be pushed over SSH.
    world.emulator.forbidden_key_types = {"ssh-rsa"}
    try:
        _, port = world.start_endpoint()
        code, report, _ = canary(world, port, tmp_path, timeout=20)
    finally:
        world.emulator.forbidden_key_types = set()
    check = report["checks"][0]
    assert code == 1 and check["reason"].startswith("push: "), check
    assert "POST /user/keys" in check["fix"]
    assert ("POST", "/user/keys", 400) in [(r.method, r.path, r.status) for r in world.emulator.requests_since(0)]
    # Cleanup ran after the failure too.
    assert _s3_objects(world) == []


def test_storescp_down_fails_at_send(world: Any, tmp_path: Path) -> None:
    container, port = world.start_endpoint()
    container.stop(timeout=1)
    code, report, _ = canary(world, port, tmp_path, timeout=5)
    check = report["checks"][0]
    assert code == 1 and check["reason"].startswith("send: no association"), check
    assert "DICOM endpoint" in check["fix"]
