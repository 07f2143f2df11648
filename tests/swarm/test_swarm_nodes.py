"""Role labels from site.yml `nodes`: what a plan proposes for nodes as the swarm reports them."""

from __future__ import annotations

from typing import Any

from bidsflux.swarm.nodes import label_changes, observe_nodes, roles_without_node

SITE: dict[str, Any] = {
    "roles": {"data": ["gitlab", "minio", "mercure"], "processing": ["gitlab-runner"]},
    "dicom_endpoint": {"kind": "mercure"},
}


def api_node(node_id: str, host: str, labels: dict[str, str], state: str = "ready") -> dict[str, Any]:
    """The shape of GET /nodes (docker engine API, Node object)."""
    return {"ID": node_id, "Description": {"Hostname": host}, "Status": {"State": state, "Addr": "10.0.0.1"},
            "Spec": {"Labels": labels, "Role": "worker", "Availability": "active"}}


def changes(site: dict[str, Any], nodes: list[dict[str, Any]]) -> tuple[set[tuple[str, str, str]], list[str]]:
    found, warnings = label_changes(site, observe_nodes(nodes))
    return {(c.hostname, c.role, c.action) for c in found}, warnings


def test_nodes_get_exactly_their_roles() -> None:
    site = {**SITE, "nodes": {"mgr": {"roles": ["data"]}, "wrk": {"roles": ["processing"]}}}
    both = {"bidsflux.role.data": "true", "bidsflux.role.processing": "true"}
    got, warnings = changes(site, [api_node("1", "mgr", both), api_node("2", "wrk", {"other": "x"})])
    assert got == {("mgr", "processing", "remove"), ("wrk", "processing", "create")}
    assert warnings == []


def test_moving_a_role_and_a_node_not_in_site_loses_its_role_labels() -> None:
    site = {**SITE, "nodes": {"mgr": {"roles": ["data", "processing"]}}}
    got, _ = changes(site, [api_node("1", "mgr", {"bidsflux.role.data": "true"}),
                            api_node("2", "wrk", {"bidsflux.role.processing": "true", "keep": "me"})])
    assert got == {("mgr", "processing", "create"), ("wrk", "processing", "remove")}


def test_named_node_not_joined_is_a_warning_naming_its_services() -> None:
    site = {**SITE, "nodes": {"mgr": {"roles": ["data"]}, "wrk": {"roles": ["processing"]}}}
    got, warnings = changes(site, [api_node("1", "mgr", {"bidsflux.role.data": "true"})])
    assert got == set()
    assert len(warnings) == 1 and "node wrk (roles: processing) has not joined" in warnings[0]
    assert "gitlab-runner have no node" in warnings[0] and "bootstrap.sh --join" in warnings[0]


def test_a_rejoined_server_has_both_of_its_entries_labelled() -> None:
    site = {**SITE, "nodes": {"mgr": {"roles": ["data"]}, "wrk": {"roles": ["processing"]}}}
    got, _ = changes(site, [api_node("1", "mgr", {"bidsflux.role.data": "true"}),
                            api_node("2", "wrk", {"bidsflux.role.processing": "true"}, state="down"),
                            api_node("3", "wrk", {})])
    assert got == {("wrk", "processing", "create")}


def test_without_nodes_the_only_node_carries_every_role() -> None:
    got, _ = changes(SITE, [api_node("1", "solo", {})])
    assert got == {("solo", "data", "create"), ("solo", "processing", "create")}
    got, _ = changes(SITE, [api_node("1", "a", {}), api_node("2", "b", {})])
    assert {h for h, _, _ in got} == {"?"}


def test_roles_without_a_usable_node() -> None:
    nodes = observe_nodes([api_node("1", "mgr", {"bidsflux.role.data": "true"}),
                           api_node("2", "wrk", {"bidsflux.role.processing": "true"}, state="down")])
    assert roles_without_node(SITE, nodes) == {"processing": ["gitlab-runner"]}
