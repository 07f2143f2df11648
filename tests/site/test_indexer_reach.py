"""The indexer reaches GitLab's HTTPS and SSH and S3 under their public names: the storescp
service maps those names to Docker's host-gateway (the data node, where the proxy and GitLab
publish their ports host-mode), and `validate` refuses a layout where the endpoint is not on the
node of proxy and gitlab."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bidsflux.site.indexer import indexer_hosts
from support import cli, edit_yaml, validate_problems


def rendered(repo: Path) -> dict:
    result = cli("render", "--root", str(repo), "--secret-versions", "initial")
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def storescp(data: dict) -> None:
    data["dicom_endpoint"]["kind"] = "storescp"


def test_storescp_endpoint_maps_gitlab_and_s3_to_the_node(repo_copy: Path) -> None:
    edit_yaml(repo_copy / "stack/site.yml", storescp)
    services = rendered(repo_copy)["services"]
    endpoint = services["dicom_endpoint"]
    assert sorted(endpoint["extra_hosts"]) == ["gitlab.localhost:host-gateway", "s3.localhost:host-gateway"]
    # The names the entrypoint dials over SSH and HTTPS are the ones mapped.
    assert endpoint["environment"]["CI_SERVER_HOST"] == "gitlab.localhost"
    assert endpoint["environment"]["GIT_SSH_PORT"] == "222"
    # The ports reached through host-gateway are published host-mode by proxy and gitlab.
    proxy_ports = {(p["published"], p["mode"]) for p in services["proxy"]["ports"]}
    assert (443, "host") in proxy_ports
    assert {(p["published"], p["target"], p["mode"]) for p in services["gitlab"]["ports"]} == {(222, 22, "host")}


def test_indexer_names_follow_the_storage_remote_host() -> None:
    site = {"hosts": {"gitlab": "git.example.org", "s3": "s3.example.org", "s3_console": "console.example.org"},
            "indexer": {"storage_remote": "s3://console.example.org/dicoms/{PatientID}"}}
    assert indexer_hosts(site) == ["git.example.org", "console.example.org"]
    site["indexer"]["storage_remote"] = "s3://{Institution}.example.org/dicoms"
    assert indexer_hosts(site) == ["git.example.org", "s3.example.org"]


def _move(service: str, to: str):  # noqa: ANN202 - a YAML edit
    def change(data: dict) -> None:
        for services in data["roles"].values():
            if service in services:
                services.remove(service)
        data["roles"][to].append(service)
    return change


def test_validate_refuses_storescp_endpoint_away_from_proxy_and_gitlab(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    edit_yaml(site, storescp)
    edit_yaml(site, _move("dicom_endpoint", "processing"))
    found = [p for p in validate_problems(repo_copy) if "host-gateway" in p["message"] or "own node" in p["message"]]
    assert len(found) == 1, found
    assert found[0]["file"].endswith("stack/site.yml") and found[0]["key"] == "roles.processing[1]"
    assert found[0]["line"] > 1
    assert "proxy is on role data" in found[0]["message"] and "gitlab is on role data" in found[0]["message"]


def test_validate_refuses_mercure_away_from_proxy_and_gitlab(repo_copy: Path) -> None:
    edit_yaml(repo_copy / "stack/site.yml", _move("mercure", "processing"))
    found = [p for p in validate_problems(repo_copy) if "own node" in p["message"]]
    assert [p["key"] for p in found] == ["roles.processing[1]"], found
    assert found[0]["message"].startswith("mercure is on role processing")


def test_two_server_layout_with_endpoint_on_the_data_node_is_valid(repo_copy: Path) -> None:
    def two_nodes(data: dict) -> None:
        storescp(data)
        data["nodes"] = {"data-server": {"roles": ["data"]}, "processing-server": {"roles": ["processing"]}}
        data["swarm"]["advertise_addr"] = "10.20.0.5"
    edit_yaml(repo_copy / "stack/site.yml", two_nodes)
    assert validate_problems(repo_copy) == []
    assert json.dumps(rendered(repo_copy)["services"]["dicom_endpoint"]["deploy"]["placement"]) \
        == json.dumps({"constraints": ["node.labels.bidsflux.role.data == true"]})
