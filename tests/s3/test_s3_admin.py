"""`bidsflux s3 plan|apply` against a stand-in that checks MinIO's admin API as MinIO does:
SigV4 signatures, the madmin-encrypted add-user body and list-users answer (tests/minio_admin)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import MinioAdmin, crypto
from minio.credentials import StaticProvider
from minio.error import MinioAdminException

from minio_admin.server import MinioAdminStandin, madmin_decrypt, madmin_encrypt
from support import cli, copy_repository

ROOT = ("rootadmin", "root-password-1234")


@pytest.fixture
def minio() -> Iterator[MinioAdminStandin]:
    standin = MinioAdminStandin(*ROOT).start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    repo = copy_repository(tmp_path / "repo")
    values = tmp_path / "secrets.env"
    text = (repo / "stack/site.yml").read_text().replace("/var/lib/bidsflux/secrets.env", str(values))
    (repo / "stack/site.yml").write_text(text)
    values.write_text(f"minio_root_user={ROOT[0]}\nminio_root_password={ROOT[1]}\n"
                      "s3_id=INDEXERKEY0000000001\ns3_secret=first-secret-value-0001\n")
    return repo, values


def s3(repo: Path, minio: MinioAdminStandin, *args: str) -> tuple[int, str]:
    command, *options = args
    result = cli("s3", command, "--root", str(repo), "--endpoint", minio.url, *options, env={"BIDSFLUX_ENDPOINT_S3": ""})
    return result.exit_code, result.output


class _Response(io.BytesIO):
    """What minio's decrypt reads from: an HTTP response (read, close, release_conn)."""

    def release_conn(self) -> None:
        pass


def test_standin_encryption_matches_the_minio_client() -> None:
    for size in (1, 100, 16384, 16385, 40000):
        plain = os.urandom(size)
        assert madmin_decrypt("k-secret", crypto.encrypt(plain, "k-secret")) == plain
        # minio's decrypt reads from an HTTP response object
        assert crypto.decrypt(_Response(madmin_encrypt("k-secret", plain)), "k-secret") == plain
    with pytest.raises(Exception):  # noqa: B017 - any authentication failure
        madmin_decrypt("other", crypto.encrypt(b"x" * 10, "k-secret"))


def test_standin_refuses_bad_signatures_and_non_root(minio: MinioAdminStandin) -> None:
    endpoint = minio.url.removeprefix("http://")
    wrong = MinioAdmin(endpoint=endpoint, credentials=StaticProvider(ROOT[0], "not-the-password"), secure=False)
    with pytest.raises(MinioAdminException) as bad:
        wrong.user_list()
    assert json.loads(bad.value._body)["Code"] == "SignatureDoesNotMatch"
    unknown = MinioAdmin(endpoint=endpoint, credentials=StaticProvider("nobody", "whatever-123"), secure=False)
    with pytest.raises(MinioAdminException) as who:
        unknown.user_list()
    assert json.loads(who.value._body)["Code"] == "InvalidAccessKeyId"
    root = MinioAdmin(endpoint=endpoint, credentials=StaticProvider(*ROOT), secure=False)
    root.user_add("someuser", "some-secret-1")
    user = MinioAdmin(endpoint=endpoint, credentials=StaticProvider("someuser", "some-secret-1"), secure=False)
    with pytest.raises(MinioAdminException) as denied:
        user.user_list()
    assert json.loads(denied.value._body)["Code"] == "AccessDenied"
    with pytest.raises(MinioAdminException) as missing:
        root.user_info("ghost")
    assert json.loads(missing.value._body)["Code"] == "XMinioAdminNoSuchUser"


def test_plan_apply_converge_and_rotate(site: tuple[Path, Path], minio: MinioAdminStandin) -> None:
    repo, values = site
    code, out = s3(repo, minio, "plan")
    assert code == 2, out
    assert "+ bucket dicoms" in out and "+ bucket bidsflux-health" in out and "+ policy bidsflux-indexer" in out
    assert "INDE…" in out and "INDEXERKEY0000000001" not in out and "first-secret" not in out

    code, out = s3(repo, minio, "apply")
    assert code == 0, out
    st = minio.state
    assert st.buckets == {"dicoms", "bidsflux-health"}
    assert st.users["INDEXERKEY0000000001"] == {"secretKey": "first-secret-value-0001", "status": "enabled",
                                                "policyName": "bidsflux-indexer"}
    statements = st.policies["bidsflux-indexer"]["Statement"]
    assert {r for s in statements for r in s["Resource"]} == {
        "arn:aws:s3:::dicoms", "arn:aws:s3:::dicoms/*", "arn:aws:s3:::bidsflux-health", "arn:aws:s3:::bidsflux-health/*"}
    assert not any("s3:CreateBucket" in s["Action"] for s in statements)  # a fixed bucket is made by apply
    # The secret went only encrypted (add-user body), never in clear.
    assert not any(b"first-secret-value-0001" in body for body in st.bodies)
    assert ("PUT", "add-user", 200) in st.calls

    mark = len(st.calls)
    code, out = s3(repo, minio, "plan")
    assert code == 0 and "no change" in out, out
    assert all(m in ("GET", "HEAD") for m, _, _ in st.calls[mark:])

    # s3_secret rotated (bidsflux secrets rotate s3_secret): found by a signed probe, fixed by apply.
    values.write_text(values.read_text().replace("first-secret-value-0001", "second-secret-value-02"))
    code, out = s3(repo, minio, "plan")
    assert code == 2 and "~ user INDE… (S3 refuses the stored secret (s3_secret rotated))" in out, out
    assert s3(repo, minio, "apply")[0] == 0
    assert st.users["INDEXERKEY0000000001"]["secretKey"] == "second-secret-value-02"

    # s3_id rotated too: the new user exists with the policy before the old one goes.
    values.write_text(values.read_text().replace("INDEXERKEY0000000001", "INDEXERKEY0000000002"))
    code, out = s3(repo, minio, "apply")
    assert code == 0 and "- user INDE… (an earlier indexer key)" in out, out
    assert set(st.users) == {"INDEXERKEY0000000002"}
    assert st.users["INDEXERKEY0000000002"]["policyName"] == "bidsflux-indexer"
    assert s3(repo, minio, "plan")[0] == 0


def test_templated_bucket_allows_create_on_the_pattern_only(site: tuple[Path, Path], minio: MinioAdminStandin) -> None:
    repo, _ = site
    path = repo / "stack/site.yml"
    path.write_text(path.read_text().replace("s3://s3.localhost/dicoms/{ReferringPhysicianName}/",
                                             "s3://s3.localhost/dicoms.{ReferringPhysicianName}/"))
    assert s3(repo, minio, "apply")[0] == 0
    statements = minio.state.policies["bidsflux-indexer"]["Statement"]
    assert "s3:CreateBucket" in statements[0]["Action"] and "arn:aws:s3:::dicoms.*" in statements[0]["Resource"]
    assert minio.state.buckets == {"bidsflux-health"}


def test_wrong_root_credentials_and_missing_keys_are_clear(site: tuple[Path, Path], minio: MinioAdminStandin) -> None:
    repo, values = site
    values.write_text(values.read_text().replace(ROOT[1], "wrong-root-password"))
    code, out = s3(repo, minio, "plan")
    assert code == 1 and "SignatureDoesNotMatch" in out and "root credentials" in out, out
    assert "wrong-root-password" not in out
    values.write_text(f"minio_root_user={ROOT[0]}\nminio_root_password={ROOT[1]}\n")
    calls = len(minio.state.calls)
    code, out = s3(repo, minio, "apply")
    assert code == 1 and "s3_id, s3_secret" in out and len(minio.state.calls) == calls, out
    values.write_text(values.read_text() + "s3_id=INDEXERKEY0000000001\ns3_secret=first-secret-value-0001\n")
    code, out = s3(repo, minio, "plan", "--endpoint", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach MinIO" in out, out
