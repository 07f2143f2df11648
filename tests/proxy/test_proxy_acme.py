"""tls.certificates: acme against a real ACME server (Pebble, Let's Encrypt's RFC 8555 test
server, Debian `pebble`): Caddy obtains a certificate for every host and serves it; clients
verify with the ACME CA's root. Pebble is told to accept every challenge (PEBBLE_VA_ALWAYS_VALID):
the names here are not reachable from an ACME CA, and validating them is Pebble's job, not ours."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from bidsflux.proxy import certs
from support import require
from tls_front import free_port, tls_front

pytestmark = pytest.mark.integration


def test_acme_certificates_from_a_real_acme_server(site_file: Callable[..., Path], tmp_path: Path,
                                                   backends: Callable[[str], str]) -> None:
    pebble = shutil.which("pebble")
    require(pebble is not None, "pebble is not installed (apt-get install pebble)")
    assert pebble is not None
    # Pebble's own HTTPS listener needs a certificate: the test makes one (Debian ships none).
    listener_ca, listener_key = certs.make_ca("pebble listener CA", 2)
    chain, key = certs.issue(listener_ca, listener_key, ["localhost", "127.0.0.1"], 2)
    for name, text in (("listener-ca.pem", listener_ca), ("listener.pem", chain), ("listener.key", key)):
        (tmp_path / name).write_text(text)
    acme_port, mgmt_port = free_port(), free_port()
    (tmp_path / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}", "managementListenAddress": f"127.0.0.1:{mgmt_port}",
        "certificate": str(tmp_path / "listener.pem"), "privateKey": str(tmp_path / "listener.key"),
        "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log = (tmp_path / "pebble.log").open("wb")
    proc = subprocess.Popen([pebble, "-config", str(tmp_path / "pebble.json")], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        trust = ssl.create_default_context(cafile=str(tmp_path / "listener-ca.pem"))
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"https://127.0.0.1:{acme_port}/dir", context=trust, timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "pebble.log").read_text()[-1500:]
                time.sleep(0.2)

        def acme(d: dict) -> None:  # type: ignore[type-arg]
            d["tls"] = {"certificates": "acme", "acme": {"email": "admin@example.org", "ca": f"https://127.0.0.1:{acme_port}/dir",
                                                        "ca_root": str(tmp_path / "listener-ca.pem")}}

        site = site_file(acme)
        with tls_front(site, tmp_path / "state", {"gitlab": backends("gitlab"), "s3": backends("s3")}) as front:
            caddyfile = (front.folder / "Caddyfile").read_text()
            assert f"ca https://127.0.0.1:{acme_port}/dir" in caddyfile and "get_certificate" not in caddyfile
            # The certificates Pebble issued chain to its root of this run.
            root = urllib.request.urlopen(f"https://127.0.0.1:{mgmt_port}/roots/0", context=trust, timeout=5).read().decode()
            (tmp_path / "acme-root.pem").write_text(root)
            deadline = time.monotonic() + 90
            for key in ("gitlab", "s3"):
                while True:  # Caddy obtains the certificates in the background, one per name
                    try:
                        resp = requests.get(front.url(key), verify=str(tmp_path / "acme-root.pem"), timeout=5)
                        break
                    except requests.exceptions.SSLError as exc:
                        assert time.monotonic() < deadline, f"no ACME certificate served for {key}: {exc}"
                        time.sleep(1)
                assert resp.json()["backend"] == key
            # Clients get the public roots plus the internal ACME CA's root in their bundle.
            assert (tmp_path / "listener-ca.pem").read_text() in front.ca.read_text()
            # Caddy's own local CA (which it starts anyway) is never put into this machine's trust store.
            caddy_log = (tmp_path / "state" / "caddy.log").read_text()
            assert "trust store installation disabled" in caddy_log and "certificate installed properly" not in caddy_log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
