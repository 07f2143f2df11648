"""The real ops image (the repository's Dockerfile) built on the local Debian base, and the helper
image gitlab-ci-local's docker executor copies files with. Both are tagged by the hash of their
inputs, so a second run builds nothing and a changed Python file builds one new layer."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from support import REPO_ROOT, build_dockerfile_image, ensure_debian_base

BASE_IMAGE = "bidsflux-test/debian:bookworm"
OPS_REPO = "bidsflux-test/ops"
HELPER_REPO = "bidsflux-test/gcl-helper"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
LABEL = "io.bidsflux.test.inputs"
# What the Dockerfile reads from its context (the rest is excluded by .dockerignore anyway).
OPS_INPUTS = ["Dockerfile", ".dockerignore", "pyproject.toml", "scripts/bidsflux"]


def ensure_base(client: Any) -> str:
    return ensure_debian_base(client, BASE_IMAGE)


def _files(source: Path) -> list[Path]:
    out: list[Path] = []
    for rel in OPS_INPUTS:
        p = source / rel
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        elif p.exists():
            out.append(p)
    return out


def ops_inputs_hash(client: Any, source: Path = REPO_ROOT) -> str:
    h = hashlib.sha256(client.images.get(ensure_base(client)).id.encode())
    for f in _files(source):
        h.update(str(f.relative_to(source)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ops_context(dest: Path, source: Path = REPO_ROOT) -> Path:
    """The build context as the build-ops-image job sees it, plus this host's CA bundle for pip."""
    for f in _files(source):
        target = dest / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    if HOST_CA.exists():
        shutil.copy2(HOST_CA, dest / "extra-ca.crt")
    return dest


def build_in(client: Any, context: Path, tag: str, nocache: bool = False, labels: dict[str, str] | None = None) -> float:
    """Build `context` with the Dockerfile's BASE_IMAGE set to the local base; seconds taken."""
    started = time.monotonic()
    try:
        client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, nocache=nocache,
                            buildargs={"BASE_IMAGE": ensure_base(client)}, labels=labels or {})
    except Exception as exc:  # noqa: BLE001 - the build log says why; show its end
        log = "".join(str(c.get("stream", "")) for c in getattr(exc, "build_log", []) or [])
        raise AssertionError(f"ops image build failed: {exc}\n{log[-3000:]}") from None
    return time.monotonic() - started


def build_ops_image(client: Any, source: Path = REPO_ROOT) -> str:
    """`bidsflux-test/ops:<inputs hash>`, built only when no image has that tag."""
    digest = ops_inputs_hash(client, source)
    tag = f"{OPS_REPO}:{digest}"
    try:
        client.images.get(tag)
        return tag
    except Exception:  # noqa: BLE001 - not built yet
        pass
    with tempfile.TemporaryDirectory() as tmp:
        build_in(client, ops_context(Path(tmp), source), tag, labels={LABEL: digest})
    _forget_old(client, OPS_REPO, keep=tag)
    return tag


def _forget_old(client: Any, repo: str, keep: str, older_than: float = 3600) -> None:
    """Old content tags of our own test image (older than an hour, so parallel runs keep theirs)."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    for image in client.images.list(name=repo):
        created = dt.datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=dt.UTC)
        for t in image.tags:
            if t != keep and (now - created).total_seconds() > older_than:
                try:
                    client.images.remove(t, noprune=False)
                except Exception:  # noqa: BLE001 - in use by a container, or gone already
                    pass


HELPER_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# gitlab-ci-local's docker executor runs `sh` (chown) and `bash` + `rsync` (artifacts) in it.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends rsync >/dev/null \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
"""


def build_helper_image(client: Any) -> str:
    """The helper image gitlab-ci-local's docker executor uses (its default comes from Docker Hub)."""
    return build_dockerfile_image(client, HELPER_REPO, HELPER_DOCKERFILE, BASE_IMAGE)
