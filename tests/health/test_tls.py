"""TLS certificate expiry of an https endpoint, served for real on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import cli, require

pytestmark = pytest.mark.integration


@pytest.fixture
def https_endpoint(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server whose self-signed certificate for 127.0.0.1 expires in 5 days."""
    openssl = shutil.which("openssl")
    require(openssl is not None, "openssl is not installed")
    assert openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def _expiry(site: Path, url: str, env: dict[str, str]) -> dict[str, Any]:
    result = cli("health", "--site", str(site), "--check", "expiry", "--format", "json", "--endpoint", f"registry={url}", env=env)
    return json.loads(result.stdout)["checks"][0]


def test_certificate_expiring_in_5_days_fails_and_untrusted_fails(site_copy: Callable[..., Path], https_endpoint: tuple[str, Path]) -> None:
    url, cert = https_endpoint
    site = site_copy(lambda d: None)
    check = _expiry(site, url, {"SSL_CERT_FILE": str(cert)})
    line = next((d for d in check["details"] if "registry TLS certificate (127.0.0.1)" in d), None)
    assert check["status"] == "fail" and line is not None, check
    assert "expires in" in line and "(fail within 7)" in line

    check = _expiry(site, url, {"SSL_CERT_FILE": "/nonexistent.pem"})
    assert any("registry certificate at 127.0.0.1" in d and "not trusted" in d for d in check["details"]), check
