"""validate: nodes and roles, the address workers join, MinIO's drive counts, GitLab's /dev/shm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bidsflux.site.topology import minio_drive_problem, unroutable_reason
from support import cli

TWO_NODES = "nodes:\n  data-server: {roles: [data]}\n  proc-server: {roles: [processing]}\n\nswarm:\n"


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / "stack" / "site.yml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def problems(repo: Path) -> list[dict]:
    result = cli("validate", "--root", str(repo), "--format", "json")
    data = json.loads(result.output)
    assert result.exit_code == (1 if data else 0)
    return data


def line_of(repo: Path, needle: str) -> int:
    return next(i for i, ln in enumerate((repo / "stack" / "site.yml").read_text().splitlines(), 1) if needle in ln)


def test_loopback_advertise_addr_with_two_nodes_is_an_error_at_its_line(repo_copy: Path) -> None:
    edit(repo_copy, "swarm:\n", TWO_NODES)
    found = problems(repo_copy)
    assert [(p["key"], p["line"]) for p in found] == [("swarm.advertise_addr", line_of(repo_copy, "advertise_addr:"))]
    assert "127.0.0.1 is a loopback address" in found[0]["message"] and "2 nodes" in found[0]["message"]
    text = cli("validate", "--root", str(repo_copy)).output
    assert f"stack/site.yml:{line_of(repo_copy, 'advertise_addr:')}:" in text


@pytest.mark.parametrize("addr", ["0.0.0.0", "169.254.10.1", "224.0.0.5", "::1"])
def test_other_unroutable_addresses_are_refused(repo_copy: Path, addr: str) -> None:
    edit(repo_copy, "swarm:\n", TWO_NODES)
    edit(repo_copy, "advertise_addr: 127.0.0.1", f'advertise_addr: "{addr}"')
    assert [p["key"] for p in problems(repo_copy)] == ["swarm.advertise_addr"]


def test_routable_address_or_interface_with_two_nodes_is_valid(repo_copy: Path) -> None:
    edit(repo_copy, "swarm:\n", TWO_NODES)
    edit(repo_copy, "advertise_addr: 127.0.0.1", "advertise_addr: 192.168.10.5")
    assert problems(repo_copy) == []
    edit(repo_copy, "advertise_addr: 192.168.10.5", "advertise_addr: eth0")
    assert problems(repo_copy) == []


def test_loopback_is_fine_on_a_single_node(repo_copy: Path) -> None:
    edit(repo_copy, "swarm:\n", "nodes:\n  only-host: {roles: [data, processing]}\n\nswarm:\n")
    assert problems(repo_copy) == []


def test_role_on_no_node_and_data_role_on_two_nodes(repo_copy: Path) -> None:
    edit(repo_copy, "swarm:\n", "nodes:\n  a: {roles: [data]}\n  b: {roles: [data]}\n\nswarm:\n")
    edit(repo_copy, "advertise_addr: 127.0.0.1", "advertise_addr: 10.0.0.5")
    found = {p["key"]: p["message"] for p in problems(repo_copy)}
    assert "no node carries role processing, so gitlab-runner would never start" in found["nodes"]
    assert "role data is on 2 nodes (a, b)" in found["nodes.b.roles"] and "minio" in found["nodes.b.roles"]


def test_unknown_role_and_bad_host_name_are_schema_errors(repo_copy: Path) -> None:
    edit(repo_copy, "swarm:\n", "nodes:\n  good-host: {roles: [gpu]}\n  bad_host!: {roles: [data]}\n\nswarm:\n")
    found = {p["key"]: p["message"] for p in problems(repo_copy)}
    assert "'gpu' is not one of data, processing" in found["nodes.good-host.roles[0]"]
    assert "'bad_host!' is not allowed" in found["nodes.bad_host!"]


@pytest.mark.parametrize(("count", "ok"), [(1, True), (2, True), (3, True), (4, True), (16, True), (17, False),
                                           (18, True), (19, False), (23, False), (32, True), (34, True)])
def test_minio_drive_counts_follow_minio(count: int, ok: bool) -> None:
    assert (minio_drive_problem(count) is None) == ok


def test_minio_drive_count_and_nested_disks_in_validate(repo_copy: Path) -> None:
    disks = "".join(f"    - path: /srv/bidsflux/minio/disk{i}\n" for i in range(2, 18))
    edit(repo_copy, "  minio_disks:\n    - path: /srv/bidsflux/minio/disk1\n",
         "  minio_disks:\n    - path: /srv/bidsflux/minio/disk1\n" + disks.replace("disk2\n", "disk1/inner\n", 1))
    found = {p["key"]: p["message"] for p in problems(repo_copy)}
    assert "MinIO cannot use 17 drives" in found["paths.minio_disks"] and "16 or 18" in found["paths.minio_disks"]
    assert "nested" in found["paths.minio_disks[1].path"]


def test_minio_gets_one_argument_per_disk(repo_copy: Path) -> None:
    edit(repo_copy, "  minio_disks:\n    - path: /srv/bidsflux/minio/disk1\n",
         "  minio_disks:\n" + "".join(f"    - path: /srv/bidsflux/minio/disk{i}\n" for i in range(1, 5)))
    out = cli("render", "--root", str(repo_copy), "--secret-versions", "initial")
    assert out.exit_code == 0, out.output
    minio = yaml.safe_load(out.output)["services"]["minio"]
    assert minio["command"][:5] == ["server", "/data1", "/data2", "/data3", "/data4"]
    assert [v["target"] for v in minio["volumes"]] == ["/data1", "/data2", "/data3", "/data4"]


def test_gitlab_dev_shm_is_a_tmpfs_of_the_site_size(repo_copy: Path) -> None:
    edit(repo_copy, "gitlab_shm_size: 256m", "gitlab_shm_size: 1g")
    out = cli("render", "--root", str(repo_copy), "--secret-versions", "initial")
    gitlab = yaml.safe_load(out.output)["services"]["gitlab"]
    assert "shm_size" not in gitlab
    assert {"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": 1024 ** 3}} in gitlab["volumes"]


def test_unroutable_reason_names_interfaces_as_unknown() -> None:
    assert unroutable_reason("eth0") is None and unroutable_reason("10.1.2.3") is None
    assert "loopback" in (unroutable_reason("127.0.1.1") or "") and "loopback" in (unroutable_reason("127.0.0.1:2377") or "")
    assert "loopback" in (unroutable_reason("[::1]:2377") or "") and unroutable_reason("eth0:2377") is None
