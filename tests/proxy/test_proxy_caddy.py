"""The real Caddy with the Caddyfile and certificates `bidsflux tls apply` makes: routing by
host name, verification with the site CA, wrong name and expired certificates, rotation under load."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from bidsflux.proxy import certs
from support import cli
from tls_front import tls_front

pytestmark = pytest.mark.integration
ROTATIONS = 10


def _files_site(site: dict[str, Any], tmp: Path, names: list[str], not_after_days: int,
                not_before: dt.datetime | None = None) -> Path:
    """A site whose certificate comes from files (its own CA): `names`, valid until now + days."""
    ca_cert, ca_key = certs.make_ca("test institution CA", 30)
    now = dt.datetime.now(dt.UTC)
    chain, key = certs.issue(ca_cert, ca_key, names, not_after_days, now=now, not_before=not_before)
    for name, text in (("site.crt", chain), ("site.key", key), ("ca.crt", ca_cert)):
        (tmp / name).write_text(text)
    site["tls"] = {"certificates": "files", "files": {"cert": str(tmp / "site.crt"), "key": str(tmp / "site.key"),
                                                      "ca": str(tmp / "ca.crt")}}
    return tmp / "ca.crt"


def _expiry(site: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = cli("health", "--site", str(site), "--check", "expiry", "--format", "json",
                 env={"BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": "", "BIDSFLUX_SECRET_BIDS_BOT_GITLAB_TOKEN": "", **(env or {})})
    return json.loads(result.stdout)["checks"][0]


def test_routes_each_host_to_its_service_over_verified_tls(site_file: Callable[..., Path], tmp_path: Path,
                                                          backends: Callable[[str], str]) -> None:
    site = site_file(lambda d: None)
    ups = {k: backends(k) for k in ("gitlab", "registry", "s3", "s3_console", "dicom")}
    with tls_front(site, tmp_path / "state", ups) as front:
        for key in ups:
            resp = requests.get(front.url(key) + "/some/path", verify=str(front.ca), timeout=10)
            body = resp.json()
            assert (resp.status_code, body["backend"], body["path"]) == (200, key, "/some/path")
            # What GitLab's trusted-proxy setup relies on: the public host and the scheme.
            assert body["proto"] == "https" and body["host"] == f"{front.site['hosts'][key]}:{front.https_port}"
        # Plain HTTP answers with a redirect to https on the proxy's https port, never with content.
        resp = requests.get(f"http://gitlab.localhost:{front.http_port}/users/sign_in", allow_redirects=False, timeout=10)
        assert resp.status_code in (301, 308)
        assert resp.headers["Location"] == f"https://gitlab.localhost:{front.https_port}/users/sign_in"
        # A route change rewrites the Caddyfile and reloads the running proxy.
        front.options.upstreams["dicom"] = backends("dicom-moved")
        assert "reloaded" in front.apply()
        assert requests.get(front.url("dicom"), verify=str(front.ca), timeout=10).json()["backend"] == "dicom-moved"
        # Without the site CA a client refuses the proxy: verification is real.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(front.url("gitlab"), timeout=10)
        # bidsflux health finds the site CA where the site keeps it (paths.state_dir/proxy) and
        # verifies every https endpoint with it: only the bot tokens (none here) are left to warn about.
        check = _expiry(site)
        assert check["status"] == "warn" and all("token" in d and "certificate" not in d for d in check["details"]), check
        # The same run with another CA fails on every endpoint, naming the verifier's reason.
        other, _ = certs.make_ca("not the site CA", 30)
        (tmp_path / "other.crt").write_text(other)
        check = _expiry(site, {"BIDSFLUX_CA_BUNDLE": str(tmp_path / "other.crt")})
        untrusted = [d for d in check["details"] if "is not trusted" in d]
        assert check["status"] == "fail" and len(untrusted) == 4, check  # gitlab, registry, s3, mercure_web
        assert all("unable to get local issuer certificate" in d for d in untrusted), untrusted


@pytest.mark.parametrize("case", ["wrong name", "expired"])
def test_wrong_name_or_expired_certificate_fails_with_a_clear_message(site_file: Callable[..., Path], tmp_path: Path,
                                                                      backends: Callable[[str], str], case: str) -> None:
    names = ["other.localhost", "registry.localhost", "s3.localhost", "s3-console.localhost", "dicom.localhost"]
    hosts = ["gitlab.localhost", *names[1:]]

    def edit(d: Any) -> None:
        if case == "wrong name":
            _files_site(d, tmp_path, names, 90)
        else:
            _files_site(d, tmp_path, hosts, -1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30))

    site = site_file(edit)
    with tls_front(site, tmp_path / "state", {"gitlab": backends("gitlab")}) as front:
        with pytest.raises(requests.exceptions.SSLError) as err:
            requests.get(front.url("gitlab"), verify=str(front.ca), timeout=10)
        expected = "Hostname mismatch" if case == "wrong name" else "certificate has expired"
        assert expected in str(err.value)
        check = _expiry(site)
        line = next(d for d in check["details"] if "gitlab certificate at gitlab.localhost" in d)
        assert check["status"] == "fail" and "is not trusted" in line and expected in line, check
        assert "Traceback" not in json.dumps(check)


def test_rotation_under_10_hz_prober_drops_no_request(site_file: Callable[..., Path], tmp_path: Path,
                                                      backends: Callable[[str], str]) -> None:
    site = site_file(lambda d: None)
    with tls_front(site, tmp_path / "state", {"gitlab": backends("gitlab")}) as front:
        stop = threading.Event()
        results: list[tuple[float, bool, str]] = []
        serials: set[int] = set()

        def probe() -> None:
            # One new connection per request (a new TLS handshake each time), 10 per second; the
            # bundle is read each time, as a client that receives the new bundle would.
            while not stop.is_set():
                started = time.monotonic()
                try:
                    resp = requests.get(front.url("gitlab"), verify=str(front.ca), timeout=5,
                                        headers={"Connection": "close"})
                    results.append((started, resp.status_code == 200, str(resp.status_code)))
                except requests.RequestException as exc:
                    results.append((started, False, f"{time.time():.3f} {str(exc)[:300]}"))
                stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

        def served_serial() -> int:
            ctx = ssl.create_default_context(cafile=str(front.ca))
            import socket

            with socket.create_connection(("127.0.0.1", front.https_port), timeout=5) as sock, \
                    ctx.wrap_socket(sock, server_hostname="gitlab.localhost") as tls:
                der = tls.getpeercert(binary_form=True)
            from cryptography import x509

            return x509.load_der_x509_certificate(der).serial_number

        serials.add(served_serial())
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        time.sleep(1.0)
        for _ in range(ROTATIONS):
            done = front.apply(rotate=True)
            assert "reloaded" not in done and any("served from the next connection" in d for d in done)
            serials.add(served_serial())
            time.sleep(0.4)
        # A new site CA: the bundle holds old and new CA, then the proxy switches to a certificate of the new one.
        done = front.apply(rotate=True, rotate_ca=True)
        assert any("replaced the site CA" in d for d in done)
        serials.add(served_serial())
        time.sleep(1.0)
        stop.set()
        thread.join(10)
    failures = [r for r in results if not r[1]]
    span = results[-1][0] - results[0][0]
    assert len(serials) == ROTATIONS + 2, "every rotation must change the certificate the proxy serves"
    assert len(results) >= 8 * span, f"prober too slow: {len(results)} requests in {span:.1f}s"
    assert failures == [], failures[:5]
    print(f"rotation: {len(results)} requests in {span:.1f}s ({len(results) / span:.1f}/s), "
          f"{ROTATIONS} certificate rotations + 1 CA rotation, 0 failures")
