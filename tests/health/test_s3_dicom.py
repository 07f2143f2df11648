"""S3 round trip against a real SeaweedFS, console-URL detection, and C-ECHO against DCMTK."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import cli
from tls_front import tls_front

pytestmark = pytest.mark.integration


def run_health(site: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = cli("health", "--site", str(site), "--format", "json", *args, env=env)
    data = json.loads(result.stdout)
    return result.exit_code, data, result.output


def only(data: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in data["checks"] if c["name"] == name]
    assert len(found) == 1, data
    return found[0]


def test_s3_round_trip_passes_on_seaweedfs_with_keys_from_the_secrets_file(site_copy: Callable[..., Path], weed_s3: Any, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"# written once by bootstrap\ns3_id={weed_s3.access_key}\nexport s3_secret='{weed_s3.secret_key}'\n")

    # S3 as the site serves it: https://<hosts.s3> through the real Caddy with the site CA, which
    # health finds on its own (paths.state_dir/proxy/ca.crt) and verifies with.
    site = site_copy(lambda d: None)
    with tls_front(site, tmp_path, {"s3": f"127.0.0.1:{weed_s3.port}"}) as front:
        code, data, output = run_health(site, "--check", "s3", env={"BIDSFLUX_SECRET_S3_ID": "", "S3_ID": "", "S3_SECRET": ""})
    s3 = only(data, "s3")
    assert (code, s3["status"]) == (0, "ok"), s3
    assert "round trip" in s3["reason"] and front.url("s3") in s3["reason"]
    assert weed_s3.secret_key not in output

    # The canary was deleted: the health bucket holds no object afterwards.
    import boto3

    client = boto3.client("s3", endpoint_url=weed_s3.endpoint, aws_access_key_id=weed_s3.access_key,
                          aws_secret_access_key=weed_s3.secret_key, region_name="us-east-1")
    assert client.list_objects_v2(Bucket="bidsflux-health").get("KeyCount", 0) == 0


def test_s3_wrong_keys_fail_without_printing_them(site_copy: Callable[..., Path], weed_s3: Any) -> None:
    site = site_copy(lambda d: None)
    wrong = "wrong-secret-" + "x" * 20
    env = {"BIDSFLUX_SECRET_S3_ID": weed_s3.access_key, "BIDSFLUX_SECRET_S3_SECRET": wrong}
    code, data, output = run_health(site, "--check", "s3", "--endpoint", f"s3={weed_s3.endpoint}", env=env)
    s3 = only(data, "s3")
    assert code == 1 and s3["status"] == "fail"
    assert "wrong or unauthorised indexer keys" in s3["reason"], s3
    assert wrong not in output


def test_s3_html_answering_200_fails_as_console_url(site_copy: Callable[..., Path], html_server: str) -> None:
    site = site_copy(lambda d: None)
    env = {"BIDSFLUX_SECRET_S3_ID": "AKIDCONSOLE", "BIDSFLUX_SECRET_S3_SECRET": "console-secret-value"}
    code, data, _ = run_health(site, "--check", "s3", "--endpoint", f"s3={html_server}", env=env)
    s3 = only(data, "s3")
    assert code == 1 and s3["status"] == "fail"
    assert "this looks like a console URL, not the S3 API" in s3["reason"]
    assert "9000" in s3["fix"]


def test_s3_endpoint_given_by_environment_variable(site_copy: Callable[..., Path], weed_s3: Any) -> None:
    site = site_copy(lambda d: None)
    env = {"BIDSFLUX_ENDPOINT_S3": weed_s3.endpoint, "BIDSFLUX_SECRET_S3_ID": "",
           "S3_ID": weed_s3.access_key, "S3_SECRET": weed_s3.secret_key}
    code, data, output = run_health(site, "--check", "s3", env=env)
    assert (code, only(data, "s3")["status"]) == (0, "ok"), data
    assert weed_s3.secret_key not in output


def test_dicom_c_echo_to_storescp_passes(site_copy: Callable[..., Path], storescp: Any) -> None:
    def storescp_site(d: Any) -> None:
        d["dicom_endpoint"]["kind"] = "storescp"
        d["hosts"]["dicom"] = "127.0.0.1"
        d["ports"]["dicom"] = storescp.port

    site = site_copy(storescp_site)
    code, data, _ = run_health(site, "--check", "dicom")
    dicom = only(data, "dicom")
    assert (code, dicom["status"]) == (0, "ok"), dicom
    assert "C-ECHO" in dicom["reason"] and str(storescp.port) in dicom["reason"]


def test_dicom_closed_port_fails(site_copy: Callable[..., Path], closed_port: int) -> None:
    site = site_copy(lambda d: d["dicom_endpoint"].__setitem__("kind", "storescp"))
    port = closed_port
    code, data, _ = run_health(site, "--check", "dicom", "--endpoint", f"dicom=127.0.0.1:{port}")
    dicom = only(data, "dicom")
    assert code == 1 and dicom["status"] == "fail"
    assert f"127.0.0.1:{port}" in dicom["reason"]


def _mercure_json() -> dict[str, Any]:
    from bidsflux.health.checks import MERCURE_REQUIRED_KEYS

    data: dict[str, Any] = {k: "x" for k in MERCURE_REQUIRED_KEYS}
    data.update(port=11112, targets={}, rules={"mr": {"rule": "True"}}, modules={"indexer": {}})
    return data


def test_mercure_web_ui_and_config(site_copy: Callable[..., Path], storescp: Any, html_server: str, tmp_path: Path) -> None:
    base = tmp_path / "mercure"
    (base / "config").mkdir(parents=True)
    config = base / "config" / "mercure.json"
    config.write_text(json.dumps(_mercure_json()))

    def mercure(d: Any) -> None:
        d["dicom_endpoint"]["kind"] = "mercure"
        d["paths"]["mercure_base"]["path"] = str(base)

    site = site_copy(mercure)
    args = ("--check", "dicom", "--endpoint", f"dicom=127.0.0.1:{storescp.port}", "--endpoint", f"mercure_web={html_server}")
    code, data, _ = run_health(site, *args)
    dicom = only(data, "dicom")
    # Echo, web UI and mercure.json answer, but no Mercure container runs here (the real Mercure's
    # services are checked in tests/mercure/test_real_mercure.py): that is the only problem.
    assert code == 1 and dicom["reason"].startswith("Mercure services not running: ui: 1 of 1 container(s) missing"), data
    assert "worker_slow: 2 of 2 container(s) missing" in dicom["reason"]
    assert len(dicom["details"]) == 1, dicom["details"]

    broken = _mercure_json()
    del broken["modules"]
    config.write_text(json.dumps(broken))
    code, data, _ = run_health(site, *args)
    assert code == 1 and any("missing modules" in d for d in only(data, "dicom")["details"])

    config.write_text("{not json")
    code, data, _ = run_health(site, *args)
    assert code == 1 and any("not valid JSON" in d for d in only(data, "dicom")["details"])
