"""Wall time of a full `bidsflux health` run against a test setup with one hung endpoint.

Setup on 127.0.0.1: SeaweedFS as S3 (when `weed` is installed), DCMTK storescp (when installed),
the GitLab emulator from tests/, and a socket that accepts connections and never answers standing
in for the container registry. Every check runs; the target is a wall time no more than the
slowest single check's timeout plus 1 s.

    .venv/bin/python benchmarks/bench_health.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hung_socket() -> tuple[socket.socket, list[socket.socket]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(sock.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return sock, held


def start_weed(base: Path) -> tuple[subprocess.Popen[bytes] | None, str, str, str]:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        return None, "", "", ""
    key, secret = "AKBENCH" + uuid.uuid4().hex[:10].upper(), "sk-" + uuid.uuid4().hex
    (base / "data").mkdir()
    (base / "ids.json").write_text(json.dumps({"identities": [{"name": "indexer", "credentials": [
        {"accessKey": key, "secretKey": secret}], "actions": ["Admin", "Read", "Write", "List"]}]}))
    port = free_port()
    extra = [f"-{k}={free_port()}" for k in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                             "filer.port", "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg",
                                             "s3.port.lance")]
    proc = subprocess.Popen([weed, "server", f"-dir={base / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                             f"-s3.port={port}", f"-s3.config={base / 'ids.json'}", "-volume.max=0",
                             "-master.volumeSizeLimitMB=64", "-metricsPort=0", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.2)
    return proc, url, key, secret


def run(site: Path, env: dict[str, str], endpoints: list[str], timeout: float | None) -> tuple[float, dict]:
    args = [sys.executable, "-c", "from bidsflux.cli import main; main()", "health", "--site", str(site),
            "--format", "json", *(a for e in endpoints for a in ("--endpoint", e))]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    start = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
    return time.monotonic() - start, json.loads(proc.stdout)


def main() -> int:
    from ruamel.yaml import YAML

    from bidsflux.health.checks import REGISTRY
    from gitlab_emulator import GitLabEmulator

    procs: list[subprocess.Popen[bytes]] = []
    emu = GitLabEmulator().start()
    hung, held = hung_socket()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        try:
            for part in ("stack", "schemas", "ci-templates", ".gitlab-ci.yml"):
                src = ROOT / part
                if src.is_dir():
                    shutil.copytree(src, base / part)
                elif src.exists():
                    shutil.copy2(src, base / part)
            weed, s3_url, key, secret = start_weed(base)
            if weed is not None:
                procs.append(weed)
            dicom_port = free_port()
            if shutil.which("storescp"):
                procs.append(subprocess.Popen(["storescp", "--aetitle", "BIDSFLUX", "--output-directory", tmp, str(dicom_port)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            emu.create_user("dicom_bot")
            token = emu.create_token("dicom_bot", ["api"], expires_at=dt.date.today() + dt.timedelta(days=100))
            yaml = YAML()
            site = base / "stack" / "site.yml"
            data = yaml.load(site.read_text())
            data["dicom_endpoint"]["kind"] = "storescp"
            data["secrets"]["file"] = str(base / "absent.env")
            for value in data["paths"].values():
                for item in value if isinstance(value, list) else [value]:
                    item["path"] = tmp
            with site.open("w") as fh:
                yaml.dump(data, fh)
            env = {"BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": token, "BIDSFLUX_SECRET_GITLAB_ADMIN_TOKEN": emu.admin_token,
                   "BIDSFLUX_SECRET_S3_ID": key, "BIDSFLUX_SECRET_S3_SECRET": secret}
            endpoints = [f"gitlab={emu.url}", f"registry=http://127.0.0.1:{hung.getsockname()[1]}",
                         f"dicom=127.0.0.1:{dicom_port}"] + ([f"s3={s3_url}"] if s3_url else [])
            time.sleep(0.5)  # storescp binds its port
            print(f"setup: S3 {'SeaweedFS' if s3_url else 'absent'}, DICOM {'storescp' if len(procs) > (1 if s3_url else 0) else 'absent'}, "
                  "GitLab emulator, registry endpoint hung (accepts, never answers)")
            for timeout in (None, 3.0):
                wall, result = run(site, env, endpoints, timeout)
                slowest = timeout if timeout is not None else max(c.timeout for c in REGISTRY.values())
                target = slowest + 1.0
                checks = ", ".join(f"{c['name']}={c['status']}/{c['elapsed']:.1f}s" for c in result["checks"])
                label = f"--timeout {timeout:g}" if timeout is not None else "default timeouts"
                verdict = "within" if wall <= target else "OVER"
                print(f"health, {label}: wall {wall:.2f}s (incl. interpreter start), slowest timeout {slowest:g}s, "
                      f"target <= {target:g}s: {verdict}")
                print(f"  {checks}")
        finally:
            emu.stop()
            hung.close()
            for conn in held:
                conn.close()
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
