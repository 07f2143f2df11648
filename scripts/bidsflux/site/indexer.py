"""The dicom_indexer's invocation as upstream expects it: arguments, environment, secret files, S3 URL.

Upstream (UNFmontreal/containers, docker/dicom_indexer; /work/notes/indexer-facts.md):
- the image's ENTRYPOINT is `bash /entrypoint.sh`, which runs its arguments as an unquoted `$@`:
  every argument is word-split and glob-expanded again, so no argument may hold whitespace;
- the indexer is `python3 /indexer/index_dicom.py` (no `dicom_indexer` command exists);
- `--gitlab-url` goes to python-gitlab as is and needs its scheme; the entrypoint itself calls
  `https://$CI_SERVER_HOST/api/v4`, so GitLab is reached over HTTPS on 443;
- the S3 remote is made with `port=443 protocol=https host=<url host> bucket=<first path part>
  fileprefix=<rest>/<StudyInstanceUID>/`: a port in the URL is ignored;
- git pushes go over SSH to $CI_SERVER_HOST on $GIT_SSH_PORT (`ssh-keyscan -p $GIT_SSH_PORT`).

Reach: one public name serves both HTTPS (the TLS proxy) and SSH (GitLab's published port), so
inside the overlay the proxy's network alias for hosts.gitlab cannot be used (the proxy has no SSH).
The indexer's containers map the names it dials to Docker's `host-gateway` instead
(`indexer_extra_hosts`): /etc/hosts comes before DNS, and on the data node both ports are
published host-mode, so the node's own address reaches the proxy and GitLab's sshd alike.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bidsflux.site.endpoints import ca_client_environment

INDEXER_SCRIPT = ["python3", "/indexer/index_dicom.py"]
# Where entrypoint.sh reads its credentials (falling back to GITLAB_TOKEN / AWS_* variables).
SECRET_FILES = {
    "dicom_bot_gitlab_token": "/var/run/secrets/dicom_bot_gitlab_token",
    "s3_id": "/var/run/secrets/s3_id",
    "s3_secret": "/var/run/secrets/s3_secret",
}
# The sh(1) that storescp runs --exec-on-eostudy with splits unquoted ${IFS} into words, while the
# entrypoint's bash `$@` leaves the text alone: the one separator that survives both.
SH_SEPARATOR = "${IFS}"


def gitlab_url(site: Mapping[str, Any]) -> str:
    return f"https://{site['hosts']['gitlab']}"


# Docker resolves this to the node's address (the default bridge's gateway unless dockerd sets
# host-gateway-ip; moby/moby#40007, Docker 20.10). Swarm tasks get it too: the executor turns
# ContainerSpec.Hosts ("IP name") into the container's ExtraHosts ("name:IP"; moby
# daemon/cluster/executor/container/container.go hostConfig). A published port answers there from
# a container: with the userland proxy, docker-proxy listens on the host (the DNAT rule skips the
# bridge, `! -i <bridge>`); without it, hairpin NAT applies (libnetwork bridge port mapping).
HOST_GATEWAY = "host-gateway"


def indexer_hosts(site: Mapping[str, Any]) -> list[str]:
    """The public names the indexer dials: GitLab (HTTPS API and SSH push) and its S3 remote's host
    (hosts.s3 when storage_remote's host is a placeholder)."""
    names = [site["hosts"]["gitlab"]]
    try:
        s3_host = urlsplit(site["indexer"]["storage_remote"]).hostname or ""
    except ValueError:
        s3_host = ""
    if not s3_host or "{" in s3_host:
        s3_host = site["hosts"]["s3"]
    return names if s3_host in names else [*names, s3_host]


def indexer_extra_hosts(site: Mapping[str, Any]) -> dict[str, str]:
    """name -> host-gateway for each name the indexer dials (docker-py's `extra_hosts` form)."""
    return {name: HOST_GATEWAY for name in indexer_hosts(site)}


def indexer_arguments(site: Mapping[str, Any], study_input: str) -> list[str]:
    """`index_dicom.py`'s command line from site.yml, every option given explicitly."""
    idx = site["indexer"]
    args = [
        *INDEXER_SCRIPT,
        "--gitlab-url", gitlab_url(site),
        "--storage-remote", idx["storage_remote"],
        "--gitlab-group-template", idx["gitlab_group_template"],
    ]
    if idx.get("session_name_tag"):
        args += ["--session-name-tag", idx["session_name_tag"]]
    return [*args, study_input]


def indexer_environment(site: Mapping[str, Any]) -> dict[str, str]:
    """What entrypoint.sh and index_dicom.py read from the environment (besides the secret files)."""
    bots = site["bots"]
    return {
        "CI_SERVER_HOST": site["hosts"]["gitlab"],
        "GITLAB_BOT_USERNAME": bots["dicom_bot"],
        "GITLAB_BOT_EMAIL": f"{bots['dicom_bot']}@{bots['email_domain']}",
        "GIT_SSH_PORT": str(site["ports"]["gitlab_ssh"]),
        # The site's CA bundle (mounted at CA_BUNDLE_PATH): Python requests, git, and git-annex's
        # S3 remote (SYSTEM_CERTIFICATE_PATH; it ignores SSL_CERT_FILE) verify the TLS proxy.
        **ca_client_environment(),
    }


def storescp_exec_command(site: Mapping[str, Any]) -> str:
    """storescp's --exec-on-eostudy value: one word (it passes the entrypoint's `$@` intact) that
    storescp hands to /bin/sh -c after putting the study folder in place of #p."""
    return SH_SEPARATOR.join([*(shlex.quote(a) for a in indexer_arguments(site, "")[:-1]), "#p"])


def compose_escape(text: str) -> str:
    """`docker stack deploy` interpolates $VAR in the stack file; $$ is a literal $."""
    return text.replace("$", "$$")


@dataclass(frozen=True)
class S3Location:
    """Where upstream's export_to_s3 puts a session's annexed content."""

    host: str
    bucket: str
    prefix: str  # ends with "/" (or is empty)


def s3_location(storage_remote: str, metas: Mapping[str, Any]) -> S3Location:
    """upstream export_to_s3: format the path with the session metadata, first part is the bucket,
    the rest plus <StudyInstanceUID>/ the file prefix. git-annex lowercases the bucket name."""
    url = urlsplit(storage_remote)
    path = url.path.format(**metas) if "{" in url.path else url.path
    parts = [p for p in path.split("/") if p]
    bucket, rest = (parts[0].lower(), parts[1:]) if parts else ("", [])
    return S3Location(url.hostname or "", bucket, "/".join([*rest, str(metas["StudyInstanceUID"])]) + "/")


def bucket_pattern(storage_remote: str) -> str:
    """The bucket part of the URL with each placeholder as `*` (a MinIO policy resource pattern)."""
    path = urlsplit(storage_remote).path
    first = next((p for p in path.split("/") if p), "")
    out = ""
    for literal, field, _, _ in string.Formatter().parse(first):
        out += literal + ("*" if field is not None else "")
    return out.lower()


def contract_problems(site: Mapping[str, Any]) -> list[tuple[list[Any], str]]:
    """Ways site.yml would break the upstream contract, as (path in site.yml, message)."""
    out: list[tuple[list[Any], str]] = []
    idx = site["indexer"]
    for key in ("storage_remote", "gitlab_group_template", "session_name_tag"):
        value = idx.get(key)
        if isinstance(value, str) and any(c.isspace() for c in value):
            out.append((["indexer", key], "holds whitespace: the image's entrypoint runs its arguments unquoted "
                        "($@), which would split it; remove the spaces"))
    url = urlsplit(idx["storage_remote"].replace("{", "").replace("}", ""))
    if url.port is not None:
        out.append((["indexer", "storage_remote"], f"port {url.port} is ignored: the indexer's S3 remote always uses "
                    "https on port 443 (put the S3 API behind the TLS proxy and drop the port)"))
    if not bucket_pattern(idx["storage_remote"]).strip("*"):
        out.append((["indexer", "storage_remote"], "needs a bucket as the first path part (s3://HOST/BUCKET[/prefix])"))
    return out


__all__ = [
    "HOST_GATEWAY", "INDEXER_SCRIPT", "SECRET_FILES", "S3Location", "bucket_pattern", "compose_escape", "contract_problems",
    "gitlab_url", "indexer_arguments", "indexer_environment", "indexer_extra_hosts", "indexer_hosts", "s3_location", "storescp_exec_command",
]
