"""Talking to MinIO: the admin API (minio's MinioAdmin) and bucket calls (minio's Minio), both with
the root credentials; observe() and apply() for s3/state.py's plan."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bidsflux.diagnostics import UserError
from bidsflux.s3.state import Desired, Observed, Plan, shown_key


@dataclass
class Clients:
    admin: Any  # minio.MinioAdmin
    s3: Any  # minio.Minio (root)
    endpoint: str
    secure: bool
    http: Any  # urllib3.PoolManager shared by both
    region: str


def connect(endpoint_url: str, root: tuple[str, str], ca_file: str | None = None, region: str = "us-east-1") -> Clients:
    """`endpoint_url` is http(s)://host[:port] of the S3 API (MinIO wants host[:port] and a flag)."""
    import certifi
    import urllib3
    from minio import Minio, MinioAdmin
    from minio.credentials import StaticProvider

    url = urlsplit(endpoint_url)
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise UserError(f"S3 endpoint '{endpoint_url}' must be http(s)://HOST[:PORT]")
    secure = url.scheme == "https"
    # Few retries: an unreachable MinIO should fail in seconds, not after urllib3's defaults.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=30), maxsize=4,
                               retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
                               cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
                               ca_certs=ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where())
    creds = StaticProvider(*root)
    admin = MinioAdmin(endpoint=url.netloc, credentials=creds, secure=secure, http_client=http)
    # A region given: no GetBucketLocation round trip before each call (MinIO's default is us-east-1).
    s3 = Minio(url.netloc, credentials=creds, secure=secure, region=region, http_client=http)
    return Clients(admin, s3, url.netloc, secure, http, region)


def _code(exc: Exception) -> str:
    """MinIO's error code from a MinioAdminException body (the code is kept privately at 7.2.x)."""
    body = getattr(exc, "_body", "") or ""
    try:
        return str(json.loads(body).get("Code", ""))
    except (ValueError, AttributeError):
        return ""


@contextmanager
def minio_errors(what: str, endpoint: str, secrets: list[str]) -> Iterator[None]:
    """MinIO failures as one-line UserErrors with the fix; values we hold never appear."""
    from minio.error import MinioAdminException, S3Error
    from urllib3.exceptions import HTTPError as Urllib3Error

    def scrub(text: str) -> str:
        for s in secrets:
            if s:
                text = text.replace(s, "****")
        return text[:300]

    try:
        yield
    except MinioAdminException as exc:
        code = _code(exc) or f"HTTP {getattr(exc, '_code', '?')}"
        fix = ("the root credentials in the values file do not match MinIO's (minio_root_user/minio_root_password)"
               if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") else "see MinIO's logs")
        raise UserError(f"MinIO refused {what} at {endpoint}: {scrub(code)}; {fix}") from None
    except S3Error as exc:
        fix = ("; the root credentials in the values file do not match MinIO's"
               if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") else "")
        raise UserError(f"MinIO refused {what} at {endpoint}: {scrub(exc.code or str(exc))}{fix}") from None
    except (Urllib3Error, OSError) as exc:
        raise UserError(f"cannot reach MinIO at {endpoint} ({scrub(str(exc).splitlines()[0])}); is the minio "
                        "service running and ports.s3_api reachable from here? (--endpoint)") from None


def _secret_accepted(c: Clients, want: Desired) -> bool | None:
    """Sign a listing with the desired key and secret: False when S3 rejects the signature (a HEAD
    answers without a body, so only a GET tells a bad signature from a missing right)."""
    from minio import Minio
    from minio.credentials import StaticProvider
    from minio.error import S3Error

    if not want.buckets:
        return None
    probe = Minio(c.endpoint, credentials=StaticProvider(want.access_key, want.secret_key), secure=c.secure, region=c.region,
                  http_client=c.http)
    try:
        next(iter(probe.list_objects(want.buckets[0], prefix="bidsflux-probe/")), None)
    except S3Error as exc:
        return exc.code not in ("SignatureDoesNotMatch", "InvalidAccessKeyId")
    return True


def observe(c: Clients, want: Desired) -> Observed:
    from minio.error import MinioAdminException

    with minio_errors("reading users, policies and buckets", c.endpoint, [want.secret_key]):
        users = json.loads(c.admin.user_list() or "{}")  # first: a JSON error names a credential problem
        buckets = {b for b in want.buckets if c.s3.bucket_exists(b)}
        try:
            policy: dict[str, Any] | None = json.loads(c.admin.policy_info(want.policy_name))
        except MinioAdminException as exc:
            if _code(exc) != "XMinioAdminNoSuchPolicy":
                raise
            policy = None
        user = users.get(want.access_key)
        stale = sorted(k for k, info in users.items() if k != want.access_key
                       and want.policy_name in str(info.get("policyName", "")).split(","))
        accepted = _secret_accepted(c, want) if user is not None else None
    return Observed(buckets, policy, user, accepted, stale)


def apply(c: Clients, want: Desired, have: Observed, plan: Plan) -> list[str]:
    """Perform the plan: buckets, policy, the user (its secret), its mapping, then old keys go."""
    done: list[str] = []
    with minio_errors("a change", c.endpoint, [want.secret_key]):
        for ch in plan.changes:
            if ch.kind == "bucket":
                c.s3.make_bucket(ch.name)
            elif ch.kind == "policy":
                c.admin.policy_add(want.policy_name, policy=want.policy)
            elif ch.kind == "user" and ch.action in ("create", "update"):
                c.admin.user_add(want.access_key, want.secret_key)
            elif ch.kind == "user_policy":
                c.admin.policy_set(want.policy_name, user=want.access_key)
            else:
                continue
            done.append(ch.line())
        # Old keys last: the new one works before anything that used an old one loses it.
        for stale in have.stale_users:
            c.admin.user_remove(stale)
            done.append(f"- user {shown_key(stale)} (an earlier indexer key)")
    return done


__all__ = ["Clients", "apply", "connect", "minio_errors", "observe"]
