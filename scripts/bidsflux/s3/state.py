"""The indexer's S3 access in MinIO: desired (from site.yml and the secret values), observed (admin
API), the plan between them. MinIO root credentials are used here and nowhere else.

MinIO admin API facts (minio-py 7.2.20 MinioAdmin; /work/notes/indexer-facts.md part 2): users
have no labels, `user_add` upserts (a new secret replaces the old), `policy_set` replaces a user's
policy mapping, `user_info`/`policy_info` of something missing fail with XMinioAdminNoSuchUser /
XMinioAdminNoSuchPolicy, and no call reveals a user's secret: a changed secret is found by
signing a request with it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bidsflux.diagnostics import UserError
from bidsflux.site.indexer import bucket_pattern

# Object and bucket actions git-annex's S3 remote needs (Remote/S3.hs: initremote reads/writes
# <prefix>annex-uuid and lists the bucket; store/retrieve/checkpresent/remove = put/get/head/delete).
BUCKET_ACTIONS = ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"]
OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "s3:ListMultipartUploadParts"]


@dataclass
class Desired:
    access_key: str
    secret_key: str = field(repr=False)
    policy_name: str
    policy: dict[str, Any]
    buckets: list[str]  # fixed names bidsflux creates


@dataclass
class Observed:
    buckets: set[str]
    policy: dict[str, Any] | None
    user: dict[str, Any] | None  # user_info of the current key, None when missing
    secret_accepted: bool | None  # did S3 accept a request signed with the desired secret?
    stale_users: list[str]  # other users holding our policy (earlier keys)


@dataclass
class Change:
    action: str  # create | update | delete
    kind: str  # bucket | policy | user | user_policy
    name: str
    reason: str = ""

    def line(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        return f"{sign} {self.kind} {self.name}" + (f" ({self.reason})" if self.reason else "")


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes

    def lines(self) -> list[str]:
        if self.empty:
            return ["MinIO matches the site: no change"]
        return [c.line() for c in self.changes] + [f"{len(self.changes)} change(s)"]

    def to_json(self) -> str:
        return json.dumps({"changes": [asdict(c) for c in self.changes]}, indent=2)


def shown_key(access_key: str) -> str:
    """An access key as plans show it (it is a masked CI variable, so never in full)."""
    return access_key[:4] + "…" if len(access_key) > 4 else "…"


def health_bucket(site: Mapping[str, Any]) -> str:
    # The bucket `bidsflux health` round-trips its canary object through (health/s3.py).
    return f"{site['site']['name'].replace('_', '-')}-health"


def indexer_policy(site: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(buckets bidsflux creates, the policy): read/write on the dataset bucket(s) and the health
    bucket, nothing else. A bucket named by placeholders is created by git-annex itself (putBucket at
    initremote), so CreateBucket is allowed on that pattern only."""
    pattern = bucket_pattern(site["indexer"]["storage_remote"])
    health = health_bucket(site)
    fixed = [b for b in (pattern, health) if "*" not in b]
    bucket_actions = BUCKET_ACTIONS + (["s3:CreateBucket"] if "*" in pattern else [])
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": bucket_actions,
             "Resource": [f"arn:aws:s3:::{pattern}", f"arn:aws:s3:::{health}"]},
            {"Effect": "Allow", "Action": OBJECT_ACTIONS,
             "Resource": [f"arn:aws:s3:::{pattern}/*", f"arn:aws:s3:::{health}/*"]},
        ],
    }
    return sorted(set(fixed)), policy


def desired(site: Mapping[str, Any], values: Mapping[str, str]) -> Desired:
    missing = [n for n in ("s3_id", "s3_secret") if not values.get(n)]
    if missing:
        raise UserError(f"the indexer's S3 keys ({', '.join(missing)}) are not known here: run on the manager as root "
                        f"(values in {site['secrets']['file']}), or set BIDSFLUX_SECRET_S3_ID/BIDSFLUX_SECRET_S3_SECRET")
    buckets, policy = indexer_policy(site)
    return Desired(values["s3_id"], values["s3_secret"], f"{site['site']['name']}-indexer", policy, buckets)


def root_credentials(values: Mapping[str, str]) -> tuple[str, str]:
    user, password = values.get("minio_root_user"), values.get("minio_root_password")
    if not user or not password:
        raise UserError("MinIO's root credentials are not known here: run on the manager as root, or set "
                        "BIDSFLUX_SECRET_MINIO_ROOT_USER/BIDSFLUX_SECRET_MINIO_ROOT_PASSWORD")
    return user, password


def secret_values(site: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values file (when readable) with BIDSFLUX_SECRET_<NAME> overrides."""
    from bidsflux.swarm.secretstore import read_values_file

    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    try:
        values.update(read_values_file(site["secrets"]["file"]))
    except OSError:
        pass  # not root or not the manager: only the environment is left
    values.update({k[len("BIDSFLUX_SECRET_"):].lower(): v for k, v in env.items() if k.startswith("BIDSFLUX_SECRET_")})
    return values


def diff(want: Desired, have: Observed) -> Plan:
    plan = Plan()
    for bucket in want.buckets:
        if bucket not in have.buckets:
            plan.changes.append(Change("create", "bucket", bucket))
    if have.policy is None:
        plan.changes.append(Change("create", "policy", want.policy_name))
    elif have.policy != want.policy:
        plan.changes.append(Change("update", "policy", want.policy_name, "statements differ"))
    key = shown_key(want.access_key)
    if have.user is None:
        plan.changes.append(Change("create", "user", key, "the indexer's access key (s3_id)"))
    elif have.secret_accepted is False or have.user.get("status") != "enabled":
        why = "S3 refuses the stored secret (s3_secret rotated)" if have.secret_accepted is False else "user disabled"
        plan.changes.append(Change("update", "user", key, why))
    if have.user is None or want.policy_name not in str(have.user.get("policyName", "")).split(","):
        plan.changes.append(Change("update", "user_policy", key, f"policy {want.policy_name}"))
    for stale in have.stale_users:
        plan.changes.append(Change("delete", "user", shown_key(stale), "an earlier indexer key"))
    return plan


__all__ = ["Change", "Desired", "Observed", "Plan", "desired", "diff", "health_bucket", "indexer_policy",
           "root_credentials", "secret_values", "shown_key"]
