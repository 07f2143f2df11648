"""Builds the real Mercure 0.4.1 images from the shared source tarball on the local Debian base,
plus the Debian-package PostgreSQL and Redis, a recording test module and busybox (see
tests/images/mercure/README.md for the patches). Every tag carries a hash of everything that goes
into it, so a second run builds nothing. Mercure's code is unpacked at run time, never committed.

    python tests/mercure/mercure_images.py     # build (or find) them and print the tags and time
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "images" / "mercure"
REPO_ROOT = HERE.parent.parent
BASE_IMAGE = os.environ.get("BIDSFLUX_TEST_BASE_IMAGE", "bidsflux-test/debian:bookworm")
# Beside the checkout (../shared), else where this workplace keeps shared/ (a clone elsewhere).
_TARBALL_PLACES = [REPO_ROOT.parent / "shared" / "upstream" / "mercure-0.4.1.tar.gz",
                   Path("/work/shared/upstream/mercure-0.4.1.tar.gz")]
TARBALL = Path(os.environ.get("BIDSFLUX_MERCURE_TARBALL")
               or next((p for p in _TARBALL_PLACES if p.exists()), _TARBALL_PLACES[0]))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
COMPONENTS = ("ui", "bookkeeper", "receiver", "router", "processor", "dispatcher", "cleaner", "worker")
PREFIX = "bidsflux-test/mercure-"
CA_IN_IMAGE = "/etc/ssl/certs/bidsflux-build-ca.crt"


@dataclass(frozen=True)
class MercureImages:
    prefix: str
    tag: str
    postgres: str
    redis: str
    module: str
    busybox: str
    built: list[str]
    seconds: float

    def all(self) -> list[str]:
        return [f"{self.prefix}{c}:{self.tag}" for c in ("base", *COMPONENTS)] + [
            self.postgres, self.redis, self.module, self.busybox]


def _exists(image: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _asset_bytes() -> bytes:
    return b"".join(p.relative_to(ASSETS).as_posix().encode() + p.read_bytes()
                    for p in sorted(ASSETS.rglob("*")) if p.is_file() and p.suffix != ".md")


def _replace(text: str, old: str, new: str, where: str) -> str:
    if old not in text:
        raise RuntimeError(f"patch for {where} no longer applies: {old!r} not found")
    return text.replace(old, new, 1)


def patch_tree(src: Path) -> Path:
    """Apply the patches listed in tests/images/mercure/README.md; returns the generated Dockerfile."""
    # 1. pip inside the build needs the host's CA bundle; install-env.sh's --isolated ignores PIP_CERT.
    env_sh = src / "installation" / "install-env.sh"
    text = env_sh.read_text()
    text = _replace(text, "pip install wheel", f"pip install --cert {CA_IN_IMAGE} wheel", "install-env.sh")
    text = _replace(text, "--isolated", f"--isolated --cert {CA_IN_IMAGE}", "install-env.sh")
    env_sh.write_text(text)
    # 2. Debian's DCMTK (3.6.7) replaces the bundled static storescp 3.7.0 of commit 969c4b6, which
    #    this copy of the source does not ship; receiver.sh's version and commit checks go.
    recv = src / "app" / "receiver.sh"
    text = recv.read_text()
    start, end = text.index("# Verify storescp version >= 3.7.0"), text.index("# Check if the configuration is accessible")
    recv.write_text(text[:start] + 'echo "storescp: Debian DCMTK ($("$storescp_binary" --version 2>&1 | head -1))"\n\n' + text[end:])
    # 3. The base Dockerfile: the local Debian base instead of ubuntu:22.04, Debian's package names,
    #    getdcmtags built from its source, the DCMTK tools from Debian.
    base = (src / "docker" / "base" / "Dockerfile").read_text()
    base = _replace(base, "FROM ubuntu:22.04", (
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE} AS getdcmtags\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ libdcmtk-dev\n"
        "COPY getdcmtags /src\n"
        "RUN g++ -std=c++17 -O2 -o /getdcmtags /src/main.cpp -I/usr/include/dcmtk -ldcmdata -loflog -lofstd -lz -lpthread\n"
        "FROM ${BASE_IMAGE}"), "docker/base/Dockerfile")
    base = _replace(base, " lsb-core ", " dcmtk ", "docker/base/Dockerfile")  # lsb-core is not in Debian 12
    base = _replace(base, "WORKDIR /opt/mercure/app\n",
                    f"WORKDIR /opt/mercure/app\nCOPY host-ca.crt {CA_IN_IMAGE}\n", "docker/base/Dockerfile")
    base = _replace(base, "# Export the configuration", (
        "COPY --from=getdcmtags /getdcmtags /opt/mercure/app/bin/getdcmtags\n"
        "RUN ln -sf /usr/bin/storescp /opt/mercure/app/bin/dcmtk/storescp\n"
        "# Export the configuration"), "docker/base/Dockerfile")
    shutil.copyfile(HOST_CA, src / "host-ca.crt")
    out = src / "docker" / "base" / "Dockerfile.bidsflux"
    out.write_text(base)
    return out


def _build(args: list[str], log: Callable[[str], None], what: str) -> None:
    log(f"building {what}")
    proc = subprocess.run(["docker", "build", "-q", *args], capture_output=True, text=True,
                          env={**os.environ, "DOCKER_BUILDKIT": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"building {what} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")


def build(log: Callable[[str], None] = lambda _: None) -> MercureImages:
    if not TARBALL.exists():
        raise FileNotFoundError(f"Mercure's source {TARBALL} is missing (set BIDSFLUX_MERCURE_TARBALL)")
    if not _exists(BASE_IMAGE):
        script = REPO_ROOT / "tests" / "images" / "debian-base.sh"
        subprocess.run([str(script), BASE_IMAGE], check=True)
    started = time.monotonic()
    base_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE], capture_output=True,
                             text=True, check=True).stdout.strip()
    tag = _hash(TARBALL.read_bytes(), _asset_bytes(), base_id.encode(), HOST_CA.read_bytes(),
                Path(__file__).read_bytes())
    images = MercureImages(PREFIX, tag, f"{PREFIX}postgres:{tag}", f"{PREFIX}redis:{tag}",
                           f"{PREFIX}test-module:{tag}", f"{PREFIX}busybox:{tag}", [], 0.0)
    built: list[str] = []
    barg = ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    with tempfile.TemporaryDirectory(prefix="bidsflux-mercure-src-") as tmp:
        if not all(_exists(f"{PREFIX}{c}:{tag}") for c in ("base", *COMPONENTS)):
            with tarfile.open(TARBALL) as tar:
                tar.extractall(tmp, filter="data")
            src = next(p for p in Path(tmp).iterdir() if (p / "docker").is_dir())
            dockerfile = patch_tree(src)
            base_tag = f"{PREFIX}base:{tag}"
            if not _exists(base_tag):
                _build([*barg, "-f", str(dockerfile), "-t", base_tag, str(src)], log, base_tag)
                built.append(base_tag)
            for c in COMPONENTS:
                name = f"{PREFIX}{c}:{tag}"
                if not _exists(name):
                    # Mercure's own component Dockerfiles, unchanged: FROM $BASE_IMAGE_NAME:$VERSION_TAG.
                    _build(["--build-arg", f"BASE_IMAGE_NAME={PREFIX}base", "--build-arg", f"VERSION_TAG={tag}",
                            "-t", name, str(src / "docker" / c)], log, name)
                    built.append(name)
        for name, folder in ((images.postgres, "postgres"), (images.redis, "redis"), (images.module, "module")):
            if not _exists(name):
                _build([*barg, "-t", name, str(ASSETS / folder)], log, name)
                built.append(name)
        if not _exists(images.busybox):
            ctx = Path(tmp) / "busybox"
            shutil.copytree(ASSETS / "busybox", ctx)
            shutil.copy2(shutil.which("busybox") or "/bin/busybox", ctx / "busybox")
            _build(["-t", images.busybox, str(ctx)], log, images.busybox)
            built.append(images.busybox)
    return MercureImages(images.prefix, tag, images.postgres, images.redis, images.module, images.busybox,
                         built, time.monotonic() - started)


if __name__ == "__main__":
    result = build(lambda m: print(m, file=sys.stderr, flush=True))
    print("\n".join(result.all()))
    print(f"built {len(result.built)} image(s) in {result.seconds:.1f}s", file=sys.stderr)
