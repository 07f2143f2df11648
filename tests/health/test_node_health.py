"""Health of the nodes as the swarm reports them: a down node names the services it left without
a node; a named node that never joined too; a server that rejoined leaves only a warning."""

from __future__ import annotations

from typing import Any

from bidsflux.health.core import Report, Status
from bidsflux.health.swarm import check_nodes
from bidsflux.swarm.nodes import observe_nodes

SITE: dict[str, Any] = {
    "roles": {"data": ["gitlab", "minio", "dicom_endpoint", "mercure"], "processing": ["gitlab-runner"]},
    "dicom_endpoint": {"kind": "storescp"},
    "nodes": {"mgr": {"roles": ["data"]}, "wrk": {"roles": ["processing"]}},
}


def node(node_id: str, host: str, roles: list[str], state: str = "ready") -> dict[str, Any]:
    return {"ID": node_id * 12, "Description": {"Hostname": host}, "Status": {"State": state},
            "Spec": {"Labels": {f"bidsflux.role.{r}": "true" for r in roles}, "Availability": "active"}}


def findings(site: dict[str, Any], nodes: list[dict[str, Any]]) -> list[tuple[Status, str]]:
    report = Report()
    check_nodes(site, "bfx", observe_nodes(nodes), report)
    return [(f.status, f.reason) for f in report.findings]


def test_down_worker_names_itself_and_the_services_without_a_node() -> None:
    got = findings(SITE, [node("a", "mgr", ["data"]), node("b", "wrk", ["processing"], state="down")])
    fails = [r for s, r in got if s == Status.FAIL]
    assert fails == ["node wrk is down (processing); services without a node: bfx_gitlab-runner"]


def test_down_node_whose_role_runs_elsewhere_too_lost_nothing() -> None:
    site = {**SITE, "nodes": {"mgr": {"roles": ["data", "processing"]}, "wrk": {"roles": ["processing"]}}}
    got = findings(site, [node("a", "mgr", ["data", "processing"]), node("b", "wrk", ["processing"], state="down")])
    assert [r for s, r in got if s == Status.FAIL] == ["node wrk is down (processing); no service lost its node"]


def test_named_node_never_joined_and_a_stale_entry_of_a_rejoined_server() -> None:
    got = findings(SITE, [node("a", "mgr", ["data"])])
    assert (Status.FAIL, "node wrk (nodes in site.yml) is not in the swarm; services without a node: bfx_gitlab-runner") in got
    got = findings(SITE, [node("a", "mgr", ["data"]), node("b", "wrk", ["processing"], state="down"),
                          node("c", "wrk", ["processing"])])
    assert [s for s, _ in got if s == Status.FAIL] == []
    assert any(s == Status.WARN and "stale down entry" in r for s, r in got), got


def test_labels_that_drifted_from_site_yml_warn() -> None:
    got = findings(SITE, [node("a", "mgr", ["data", "processing"]), node("b", "wrk", ["processing"])])
    assert (Status.WARN, "node mgr carries roles [data, processing], site.yml gives it [data]") in got
