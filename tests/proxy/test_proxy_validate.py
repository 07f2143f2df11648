"""`validate` on the tls section, the TLS plan's idempotence, and the rendered proxy pieces."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from bidsflux.proxy import certs
from bidsflux.proxy.apply import run
from bidsflux.proxy.plan import split_pem
from support import cli


def problems(site: Path) -> list[dict[str, Any]]:
    result = cli("validate", "--site", str(site), "--format", "json")
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)


def _provided(tmp: Path, names: list[str], days: int = 90) -> dict[str, str]:
    ca_cert, ca_key = certs.make_ca("institution CA", 60)
    chain, key = certs.issue(ca_cert, ca_key, names, days)
    (tmp / "site.crt").write_text(chain)
    (tmp / "ca.crt").write_text(ca_cert)
    (tmp / "site.key").write_text(key)
    return {"cert": str(tmp / "site.crt"), "key": str(tmp / "site.key"), "ca": str(tmp / "ca.crt")}


def test_provided_certificate_not_covering_a_host_is_an_error_on_that_host(site_file: Callable[..., Path], tmp_path: Path) -> None:
    files = _provided(tmp_path, ["gitlab.localhost", "*.localhost"])

    def edit(d: Any) -> None:
        d["hosts"]["registry"] = "registry.imaging.example.org"
        d["tls"] = {"certificates": "files", "files": files}

    site = site_file(edit)
    found = problems(site)
    assert [(p["file"], p["key"]) for p in found] == [("stack/site.yml", "hosts.registry")], found
    line = site.read_text().splitlines()[found[0]["line"] - 1]
    assert "registry.imaging.example.org" in line
    assert "not covered by the certificate" in found[0]["message"] and "*.localhost" in found[0]["message"]


def test_https_hosts_without_a_certificate_source(site_file: Callable[..., Path]) -> None:
    site = site_file(lambda d: d["tls"].__setitem__("certificates", "files"))
    found = problems(site)
    assert [p["key"] for p in found] == ["tls.certificates"]
    assert "without a certificate source" in found[0]["message"]

    site = site_file(lambda d: d["tls"].update({"certificates": "acme", "acme": {"email": "a@example.org"}}))
    found = problems(site)
    # Every *.localhost host: no ACME CA can issue for it.
    assert sorted(p["key"] for p in found) == sorted(f"hosts.{k}" for k in ("gitlab", "registry", "s3", "s3_console", "dicom"))
    assert all("ACME CA cannot issue" in p["message"] for p in found)


def test_expired_provided_certificate_and_key_in_repository(site_file: Callable[..., Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "stack" / "tls").mkdir()
    import datetime as dt

    ca_cert, ca_key = certs.make_ca("institution CA", 60)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    chain, _ = certs.issue(ca_cert, ca_key, ["*.localhost"], 10, now=past)
    (repo / "stack" / "tls" / "site.crt").write_text(chain)
    site = site_file(lambda d: d.__setitem__("tls", {"certificates": "files", "files": {
        "cert": "stack/tls/site.crt", "key": str(repo / "stack" / "tls" / "site.key")}}))
    found = {p["key"]: p["message"] for p in problems(site)}
    assert "expired on" in found["tls.files.cert"]
    assert "inside the repository" in found["tls.files.key"]


def test_plan_apply_converges_and_rotation_renews(site_file: Callable[..., Path], tmp_path: Path) -> None:
    site = yaml.safe_load(site_file(lambda d: None).read_text())
    site["paths"]["state_dir"]["path"] = str(tmp_path / "state")
    site["secrets"]["file"] = str(tmp_path / "state" / "secrets.env")
    quiet = Console(quiet=True)
    plan, done = run(site, tmp_path, quiet, None, None)
    assert {c.kind for c in plan.changes} == {"ca", "certificate", "bundle", "caddyfile"}
    folder = tmp_path / "state" / "proxy"
    caddyfile = (folder / "Caddyfile").read_text()
    # The stack's proxy: container paths, 443, the overlay's task names.
    assert "https://gitlab.localhost {" in caddyfile and "reverse_proxy tasks.bidsflux_gitlab:80" in caddyfile
    assert "reverse_proxy tasks.bidsflux_minio:9000" in caddyfile
    # Certificates come from the loopback-only file server, never named in the Caddyfile.
    assert "get_certificate http http://127.0.0.1:2020/current.pem" in caddyfile
    assert "http://127.0.0.1:2020 {\n\tbind 127.0.0.1" in caddyfile and "root * /etc/caddy/bidsflux/certs" in caddyfile
    pem = folder / "certs" / "current.pem"
    chain, key = split_pem(pem.read_text())
    assert chain and key and certs.key_matches(chain, key)
    info = certs.read_info(chain)
    assert set(info.names) == {"gitlab.localhost", "registry.localhost", "s3.localhost", "s3-console.localhost", "dicom.localhost"}
    assert certs.signed_by(chain, (folder / "ca.crt").read_text())
    assert oct(pem.stat().st_mode & 0o777) == "0o600"
    values = (tmp_path / "state" / "secrets.env").read_text()
    assert "tls_ca_key=" in values and "PRIVATE KEY" not in "".join(done)
    plan, done = run(site, tmp_path, quiet, None, None)
    assert plan.empty and done == []
    plan, _ = run(site, tmp_path, quiet, None, None, rotate=True)
    assert [c.kind for c in plan.changes] == ["certificate"]  # no Caddyfile change: no reload
    assert certs.read_info(split_pem(pem.read_text())[0]).serial != info.serial
    assert (folder / "Caddyfile").read_text() == caddyfile
    # A new host name in site.yml: the certificate no longer covers it, the plan says so.
    site["hosts"]["s3"] = "objects.localhost"
    plan, _ = run(site, tmp_path, quiet, None, None, dry_run=True)
    assert any("does not cover objects.localhost" in c.reason for c in plan.changes)


def test_rendered_stack_wires_tls(repo_copy: Path) -> None:
    out = yaml.safe_load(cli("render", "--root", str(repo_copy), "--secret-versions", "initial").stdout)
    services = out["services"]
    omnibus = services["gitlab"]["environment"]["GITLAB_OMNIBUS_CONFIG"]
    for line in ("external_url 'https://gitlab.localhost'", "nginx['listen_https'] = false", "nginx['listen_port'] = 80",
                 "registry_external_url 'https://registry.localhost'", "registry_nginx['listen_https'] = false",
                 "nginx['real_ip_trusted_addresses'] = ['10.87.0.0/16']", "gitlab_rails['trusted_proxies'] = ['10.87.0.0/16']"):
        assert line in omnibus
    assert [p["target"] for p in services["gitlab"]["ports"]] == [22]  # http(s) only through the proxy
    assert "ports" not in services["minio"]
    assert {p["published"] for p in services["proxy"]["ports"]} == {80, 443}
    assert services["proxy"]["networks"]["bidsflux"]["aliases"] == [
        "gitlab.localhost", "registry.localhost", "s3.localhost", "s3-console.localhost", "dicom.localhost"]
    assert services["node-trust"]["deploy"]["mode"] == "global"
    assert "/host/etc/docker/certs.d/registry.localhost" in services["node-trust"]["command"][-1]
    for svc in ("gitlab-runner", "gitlab-runner-dind", "node-trust"):
        assert {"source": "tls_ca_bundle", "target": "site-ca.crt", "mode": 0o444} in services[svc]["secrets"]


def test_tls_commands_plan_apply_rotate(site_file: Callable[..., Path], tmp_path: Path, no_docker_env: dict[str, str]) -> None:
    def where(d: Any) -> None:
        d["paths"]["state_dir"]["path"] = str(tmp_path / "state")
        d["secrets"]["file"] = str(tmp_path / "state" / "secrets.env")

    site = site_file(where)
    plan = cli("tls", "plan", "--site", str(site), env=no_docker_env)
    assert plan.exit_code == 2, plan.output
    assert "+ ca tls_ca_cert (create): no site CA yet" in plan.output and "tls_ca_bundle secret is not checked" in plan.output
    applied = cli("tls", "apply", "--site", str(site), env=no_docker_env)
    assert applied.exit_code == 0 and "done: created the site CA" in applied.output, applied.output
    assert "PRIVATE KEY" not in applied.output + plan.output
    again = cli("tls", "plan", "--site", str(site), "--format", "json", env=no_docker_env)
    assert again.exit_code == 0 and json.loads(again.stdout) == {"changes": []}
    rotated = cli("tls", "rotate", "--site", str(site), env=no_docker_env)
    assert rotated.exit_code == 0 and "rotation requested" in rotated.output
    # A site file that validate refuses changes nothing and says where.
    broken = site_file(lambda d: d["tls"].__setitem__("certificates", "files"))
    result = cli("tls", "apply", "--site", str(broken), env=no_docker_env)
    assert result.exit_code == 1 and "stack/site.yml" in result.output and "tls.certificates" in result.output
