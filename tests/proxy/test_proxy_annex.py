"""git-annex's S3 special remote through the real Caddy to a real S3 (SeaweedFS), the way the
dicom_indexer makes it (`protocol=https`, path-style, host = hosts.s3), trusting the site CA only
through the environment bidsflux gives the indexer (site.endpoints.ca_client_environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bidsflux.site.endpoints import CA_BUNDLE_PATH, ca_client_environment
from seaweed import start_weed
from support import require
from tls_front import tls_front

pytestmark = pytest.mark.integration


def _git(repo: Path, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, timeout=180)
    if check:
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def test_annex_s3_remote_over_https_put_and_get(site_file: Callable[..., Path], tmp_path: Path) -> None:
    require(shutil.which("git-annex") is not None, "git-annex is not installed (apt-get install git-annex)")
    # `localhost` resolves for every program here, unlike the *.localhost names of the default site.
    site = site_file(lambda d: d["hosts"].__setitem__("s3", "localhost"))
    with start_weed(tmp_path / "weed") as s3, tls_front(site, tmp_path / "state", {"s3": f"127.0.0.1:{s3.port}"}) as front:
        # The indexer's environment with the CA bundle at its path in the container (here: the file).
        trust = {k: str(front.ca) for k in ca_client_environment()}
        assert set(ca_client_environment().values()) == {CA_BUNDLE_PATH}
        base = {k: v for k, v in os.environ.items()
                if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "SYSTEM_CERTIFICATE_PATH", "GIT_SSL_CAINFO",
                             "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
        base.update({"HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
                     "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost",
                     "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
        repo = tmp_path / "dataset"
        subprocess.run(["git", "init", "-q", str(repo)], check=True, env=base)
        _git(repo, "annex", "init", "-q", "test", env=base)
        _git(repo, "config", "annex.security.allowed-ip-addresses", "all", env=base)
        remote = ["annex", "initremote", "s3", "type=S3", "encryption=none", "protocol=https",
                  f"port={front.https_port}", "host=localhost", "requeststyle=path", "bucket=dataset-bucket",
                  "datacenter=us-east-1"]
        # Without the site CA git-annex refuses the proxy: the trust below is what makes it work.
        refused = _git(repo, *remote, env=base, check=False)
        assert refused.returncode != 0 and "unknown CA" in refused.stdout + refused.stderr, refused.stderr
        env = {**base, **trust}
        _git(repo, *remote, env=env)
        payload = os.urandom(200_000)
        (repo / "scan.nii").write_bytes(payload)
        _git(repo, "annex", "add", "scan.nii", env=env)
        _git(repo, "commit", "-qm", "scan", env=env)
        _git(repo, "annex", "copy", "--to", "s3", "scan.nii", env=env)
        _git(repo, "annex", "drop", "scan.nii", env=env)  # numcopies=1: dropped only because S3 has it
        assert not (repo / "scan.nii").exists() or not os.access(repo / "scan.nii", os.R_OK)
        _git(repo, "annex", "get", "scan.nii", "--from", "s3", env=env)
        assert (repo / "scan.nii").read_bytes() == payload
        # The object is in the bucket, reached through the proxy with the same trust.
        import boto3

        objects = boto3.client("s3", endpoint_url=front.url("s3"), verify=str(front.ca), region_name="us-east-1",
                               aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key
                               ).list_objects_v2(Bucket="dataset-bucket")
        assert any(o["Size"] == len(payload) for o in objects.get("Contents", [])), objects
