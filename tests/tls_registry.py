"""A real container registry for tests: Debian's docker-registry (distribution 2.8, the program of
registry:2) on 127.0.0.1:<free port> over TLS with a test CA, with htpasswd (Basic) auth or GitLab's
token auth (the emulator's /jwt/auth signs the tokens)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import yaml

from support import require

USER = "ci-build"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _htpasswd(user: str, password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"  # bcrypt: what distribution accepts


class TlsRegistry:
    """docker-registry on 127.0.0.1:<port> with a certificate from a test CA and htpasswd auth."""

    def __init__(self, folder: Path, token_auth: Any = None) -> None:
        """`token_auth`: a GitLab emulator whose /jwt/auth issues this registry's tokens; else htpasswd."""
        from bidsflux.proxy.certs import issue, make_ca

        binary = shutil.which("docker-registry")
        require(binary is not None, "docker-registry is not installed (apt-get install docker-registry)")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.password = uuid.uuid4().hex
        ca, ca_key = make_ca("bidsflux test registry CA", 2)
        cert, key = issue(ca, ca_key, ["127.0.0.1"], 2)
        self.ca_file = folder / "ca" / "ca.crt"
        self.ca_file.parent.mkdir()
        self.ca_file.write_text(ca)
        (folder / "tls.crt").write_text(cert)
        (folder / "tls.key").write_text(key)
        (folder / "htpasswd").write_text(_htpasswd(USER, self.password))
        (folder / "registry.yml").write_text(yaml.safe_dump({
            "version": 0.1, "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
            "http": {"addr": self.address, "secret": uuid.uuid4().hex,
                     "tls": {"certificate": str(folder / "tls.crt"), "key": str(folder / "tls.key")}},
            "auth": self._auth(folder, token_auth)}))
        self.log = folder / "registry.log"
        self.proc = subprocess.Popen([binary, "serve", str(folder / "registry.yml")], stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"docker-registry did not start: {self.log.read_text()[-1000:]}")

    @staticmethod
    def _auth(folder: Path, emulator: Any) -> dict[str, Any]:
        if emulator is None:
            return {"htpasswd": {"realm": "bidsflux-test", "path": str(folder / "htpasswd")}}
        from gitlab_emulator.registry_auth import ISSUER, SERVICE

        (folder / "gitlab-issuer.crt").write_text(emulator.registry_signing_key().cert_pem)
        return {"token": {"realm": f"{emulator.url}/jwt/auth", "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(folder / "gitlab-issuer.crt")}}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


