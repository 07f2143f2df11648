"""The canary run: send a synthetic study to the DICOM endpoint, wait for the indexer's dataset in
GitLab and its annexed content in S3, verify the content's checksum, clean up; name the first
stage that failed (send, index, push, annex) and its fix."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bidsflux.canary.study import STUDY_DESCRIPTION, Study, make_study
from bidsflux.diagnostics import UserError
from bidsflux.site.indexer import S3Location, s3_location

STAGES = ("send", "index", "push", "annex")
# git-annex key of an S3 object: SHA256E-s<size>[-S<chunksize>-C<n>]--<sha256><ext> (Annex/Key.hs).
ANNEX_KEY = re.compile(r"^(SHA256E?)-s(\d+)(?:-S\d+-C(\d+))?--([0-9a-f]{64})")
KEY_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")


@dataclass
class StageResult:
    name: str
    status: str  # ok | fail | skipped
    message: str = ""
    fix: str = ""
    seconds: float = 0.0


@dataclass
class CanaryConfig:
    site: Mapping[str, Any]
    gitlab_url: str
    gitlab_token: str
    s3_endpoint: str
    s3_keys: tuple[str, str]
    dicom: str  # host:port
    timeout: float
    poll: float = 2.0
    keep: bool = False


@dataclass
class Outcome:
    stages: list[StageResult] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)
    project: str = ""
    s3_prefix: str = ""

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.stages) and len(self.stages) == len(STAGES)

    @property
    def failed(self) -> StageResult | None:
        return next((s for s in self.stages if s.status == "fail"), None)


def _s3(cfg: CanaryConfig):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=cfg.s3_endpoint, aws_access_key_id=cfg.s3_keys[0],
                        aws_secret_access_key=cfg.s3_keys[1], region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      connect_timeout=5, read_timeout=30, retries={"max_attempts": 1},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def send(study: Study, dicom: str, ae_title: str) -> str:
    """C-STORE every image; '' when all were stored, else what went wrong."""
    from pynetdicom import AE

    from bidsflux.canary.study import MR_IMAGE_STORAGE

    host, _, port = dicom.rpartition(":")
    ae = AE(ae_title="BIDSFLUX_CANARY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MR_IMAGE_STORAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate(host, int(port), ae_title=ae_title)
    if not assoc.is_established:
        return f"no association with {ae_title}@{dicom} (refused, aborted or nothing listening)"
    try:
        for ds in study.datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                return f"C-STORE of image {ds.InstanceNumber} answered status {code if code is None else hex(code)}"
    finally:
        assoc.release()
    return ""


def _project(gl: Any, path: str) -> dict[str, Any] | None:
    import gitlab

    try:
        return gl.http_get(f"/projects/{quote(path, safe='')}")
    except gitlab.exceptions.GitlabHttpError as exc:
        if exc.response_code == 404:
            return None
        raise


def annexed_content(client: Any, loc: S3Location) -> list[tuple[str, bool]]:
    """(key, checksum and size match) for each annexed file under the prefix; chunks joined in order."""
    listing = client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix)
    chunks: dict[tuple[str, int, str], list[tuple[int, str]]] = {}
    for obj in listing.get("Contents", []):
        name = obj["Key"][len(loc.prefix):]
        m = ANNEX_KEY.match(name)
        if m:
            chunks.setdefault((m.group(1), int(m.group(2)), m.group(4)), []).append((int(m.group(3) or 0), obj["Key"]))
    out = []
    for (_, size, digest), parts in chunks.items():
        h, n = hashlib.sha256(), 0
        for _, key in sorted(parts):
            body = client.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
            h.update(body)
            n += len(body)
        out.append((f"{digest[:12]}… ({size} bytes)", h.hexdigest() == digest and n == size))
    return out


def _s3_refuses_keys(client: Any, loc: S3Location) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix, MaxKeys=1)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code if code in KEY_REFUSED else ""
    except BotoCoreError as exc:
        return f"unreachable ({exc.__class__.__name__})"
    return ""


def run(cfg: CanaryConfig, progress: Callable[[str], None] = lambda _: None) -> Outcome:
    import gitlab

    site, stack = cfg.site, cfg.site["site"]["name"]
    study = make_study()
    metas = study.metas
    try:
        group = site["indexer"]["gitlab_group_template"].format(**metas)
        loc = s3_location(site["indexer"]["storage_remote"], metas)
    except (IndexError, KeyError, ValueError) as exc:
        raise UserError(f"indexer templates of site.yml cannot be filled from the canary's study "
                        f"(StudyDescription {STUDY_DESCRIPTION!r}): {exc.__class__.__name__} {exc}") from None
    project_path = f"{group}/sourcedata/dicoms/{metas['StudyInstanceUID']}"
    out = Outcome(project=project_path, s3_prefix=f"s3://{loc.bucket}/{loc.prefix}")
    gl = gitlab.Gitlab(cfg.gitlab_url, private_token=cfg.gitlab_token, timeout=30)
    s3 = _s3(cfg)
    endpoint_logs = f"docker service logs {stack}_dicom_endpoint" if site["dicom_endpoint"]["kind"] == "storescp" \
        else "Mercure's processing logs (the dicom_indexer module)"

    def stage(name: str, status: str, message: str, fix: str = "", since: float = 0.0) -> None:
        out.stages.append(StageResult(name, status, message, fix, round(time.monotonic() - since, 2) if since else 0.0))
        progress(f"{name}: {status} {message}")

    try:
        t0 = time.monotonic()
        problem = send(study, cfg.dicom, site["dicom_endpoint"]["ae_title"])
        if problem:
            stage("send", "fail", problem, f"is the DICOM endpoint running and reachable at {cfg.dicom}? "
                  f"(bidsflux health --check endpoint; docker service ps {stack}_dicom_endpoint)", t0)
            return out
        stage("send", "ok", f"{len(study.datasets)} images stored at {cfg.dicom}", since=t0)

        t1, deadline = time.monotonic(), time.monotonic() + cfg.timeout
        project, verified = None, []
        while True:
            project = _project(gl, project_path)
            if project is not None and not project.get("empty_repo", True):
                verified = annexed_content(s3, loc)
                if verified:
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(cfg.poll)
        waited = f"after {cfg.timeout:.0f}s"
        if project is None:
            refused = _s3_refuses_keys(s3, loc)
            if refused:
                # The indexer exports to S3 before it creates anything in GitLab.
                stage("index", "skipped", "")
                stage("push", "skipped", "")
                stage("annex", "fail", f"S3 refuses the indexer's keys ({refused}) at {cfg.s3_endpoint}",
                      "make MinIO know the current keys: bidsflux s3 apply (after a rotation: bidsflux secrets "
                      "rotate s3_id s3_secret, then bidsflux s3 apply)", t1)
            else:
                stage("index", "fail", f"no project {project_path} in GitLab {waited}",
                      f"read the indexer's output ({endpoint_logs}); check that it reaches GitLab over HTTPS at "
                      f"hosts.gitlab with a valid dicom_bot token (bidsflux health --check gitlab)", t1)
            return out
        stage("index", "ok", f"project {project_path}", since=t1)
        if project.get("empty_repo", True):
            stage("push", "fail", f"{project_path} exists but nothing was pushed {waited}",
                  "the indexer pushes over SSH with a key it registers (POST /user/keys): check the dicom_bot "
                  "token has scope api, GitLab accepts RSA keys, and SSH answers on ports.gitlab_ssh at hosts.gitlab "
                  f"({endpoint_logs})", t1)
            return out
        stage("push", "ok", "dataset pushed", since=t1)
        bad = [k for k, ok in verified if not ok]
        if not verified:
            refused = _s3_refuses_keys(s3, loc)
            stage("annex", "fail", f"no annexed content under {out.s3_prefix} {waited}"
                  + (f" (S3 refuses the keys: {refused})" if refused else ""),
                  "bidsflux s3 apply (the indexer's user and policy), and check indexer.storage_remote points at "
                  "the S3 API behind the TLS proxy (https, port 443)", t1)
        elif bad:
            stage("annex", "fail", f"content under {out.s3_prefix} does not match its checksum: {', '.join(bad)}",
                  "S3 is not storing data faithfully: check MinIO's disks and logs", t1)
        else:
            stage("annex", "ok", f"{len(verified)} annexed file(s) under {out.s3_prefix}, checksums match", since=t1)
        return out
    finally:
        if not cfg.keep:
            out.cleanup = cleanup(gl, s3, group, loc)


def cleanup(gl: Any, s3: Any, group: str, loc: S3Location) -> list[str]:
    """Remove what the canary made: its GitLab group (the top one when it is the canary's own) and
    its objects in S3. Failures are reported, not raised: the canary's verdict stands."""
    import gitlab
    from botocore.exceptions import BotoCoreError, ClientError

    done = []
    top = group.split("/")[0]
    target = top if "canary" in top.lower() else group
    try:
        gl.http_delete(f"/groups/{quote(target, safe='')}")
        done.append(f"deleted GitLab group {target}")
    except gitlab.exceptions.GitlabHttpError as exc:
        if exc.response_code != 404:
            done.append(f"could not delete GitLab group {target}: HTTP {exc.response_code}")
    except Exception as exc:  # noqa: BLE001 - an unreachable GitLab must not hide the verdict
        done.append(f"could not delete GitLab group {target}: {exc.__class__.__name__}")
    try:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=loc.bucket, Prefix=loc.prefix).get("Contents", [])]
        for key in keys:
            s3.delete_object(Bucket=loc.bucket, Key=key)
        if keys:
            done.append(f"deleted {len(keys)} object(s) under s3://{loc.bucket}/{loc.prefix}")
    except (ClientError, BotoCoreError) as exc:
        done.append(f"could not delete s3://{loc.bucket}/{loc.prefix}: {exc.__class__.__name__}")
    return done


__all__ = ["STAGES", "CanaryConfig", "Outcome", "StageResult", "annexed_content", "cleanup", "run", "send"]
