"""Health of S3: a canary object put, read back, compared and deleted with the indexer's keys."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from bidsflux.health.context import (
    http_get,
    http_problem,
)
from bidsflux.health.core import (
    Context,
    Report,
    check,
    first_line,
)

# ---------------------------------------------------------------------------------------------
# S3

CONSOLE_REASON = "this looks like a console URL, not the S3 API"


def _looks_like_s3(headers: Mapping[str, str], body: bytes) -> bool:
    if any(k.lower().startswith("x-amz-") for k in headers):
        return True
    head = body.lstrip()[:200].lower()
    return head.startswith(b"<?xml") or head.startswith(b"<error") or b"<listallmybucketsresult" in head


def _looks_like_html(headers: Mapping[str, str], body: bytes) -> bool:
    head = body.lstrip()[:200].lower()
    return "text/html" in headers.get("Content-Type", "").lower() or head.startswith((b"<!doctype html", b"<html"))


def health_bucket(site: Mapping[str, Any]) -> str:
    return f"{site['site']['name'].replace('_', '-')}-health"


@check("s3", timeout=20, summary="canary put/get/compare/delete on the S3 API with the indexer's keys")
def check_s3(ctx: Context, report: Report, timeout: float) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    io = ctx.io_timeout(timeout)
    endpoint = ctx.endpoints["s3"].rstrip("/")
    report.step = f"GET {endpoint}/"
    try:
        probe = http_get(endpoint + "/", io, verify=ctx.verify)
    except Exception as exc:  # noqa: BLE001
        report.fail(http_problem(exc, endpoint, io), "is MinIO running and ports.s3_api published? (bidsflux health --check swarm)")
        return
    if _looks_like_html(probe.headers, probe.content) or not _looks_like_s3(probe.headers, probe.content):
        report.fail(f"{endpoint}: {CONSOLE_REASON} (answered {probe.status_code} "
                    f"{probe.headers.get('Content-Type', 'without a content type')}, no S3 headers)",
                    "point hosts.s3/ports.s3_api (and indexer.storage_remote) at the S3 API port (9000), not the console (9090)")
        return

    key_id, secret = ctx.secrets.get("s3_id"), ctx.secrets.get("s3_secret")
    if not key_id or not secret:
        missing = "s3_id" if not key_id else "s3_secret"
        report.fail("the indexer's S3 keys are not available here", ctx.secrets.how_to_provide(missing))
        return
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1",
        verify=ctx.verify,
        config=Config(signature_version="s3v4", connect_timeout=io, read_timeout=io, retries={"max_attempts": 1},
                      s3={"addressing_style": "path"},
                      # Newer botocore adds CRC trailers some S3 servers reject; checksums are ours.
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )
    bucket = health_bucket(ctx.site)
    key = f"canary/{uuid.uuid4().hex}"
    payload = f"bidsflux health canary {uuid.uuid4()}\n".encode() * 64
    md5 = hashlib.md5(payload, usedforsecurity=False)
    step = f"reach bucket {bucket}"
    try:
        report.step = f"HEAD s3://{bucket}"
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            step = f"create bucket {bucket}"
            report.step = f"create s3://{bucket}"
            client.create_bucket(Bucket=bucket)
        step = "put the canary"
        report.step = f"PUT s3://{bucket}/{key}"
        put = client.put_object(Bucket=bucket, Key=key, Body=payload, ContentMD5=base64.b64encode(md5.digest()).decode())
        headers = put.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if not any(h.lower().startswith("x-amz-") for h in headers) and "etag" not in {h.lower() for h in headers}:
            report.fail(f"{endpoint}: {CONSOLE_REASON} (the upload was answered without S3 headers)",
                        "point hosts.s3/ports.s3_api at the S3 API port, not the console")
            return
        step = "read the canary back"
        report.step = f"GET s3://{bucket}/{key}"
        got = client.get_object(Bucket=bucket, Key=key)
        body = got["Body"].read()
        etag = str(got.get("ETag", "")).strip('"')
        step = "delete the canary"
        report.step = f"DELETE s3://{bucket}/{key}"
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            report.fail(f"S3 refused to {step}: {code} (wrong or unauthorised indexer keys)",
                        "make the indexer's keys (s3_id/s3_secret) exist in MinIO with read/write rights (bidsflux s3 apply)")
        else:
            report.fail(f"S3 failed to {step}: {code} {err.get('Message', '')}".strip(), "check MinIO's logs (docker service logs)")
        return
    except BotoCoreError as exc:
        report.fail(f"S3 failed to {step}: {first_line(exc)}", "is the S3 API reachable from here?")
        return
    if hashlib.sha256(body).hexdigest() != hashlib.sha256(payload).hexdigest():
        report.fail(f"the canary read back differs from what was written ({len(body)} of {len(payload)} bytes)",
                    "S3 is not storing data faithfully: check MinIO's disks and logs")
        return
    if etag and "-" not in etag and etag != md5.hexdigest():
        report.fail("the canary's ETag does not match its MD5", "S3 is not storing data faithfully: check MinIO")
        return
    report.ok(f"canary round trip on {endpoint} (bucket {bucket}) matched")


