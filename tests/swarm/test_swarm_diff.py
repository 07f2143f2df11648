"""Plan's field comparison on its own: what the stack file removes must show as a change, and
what docker fills in by itself must not."""

from __future__ import annotations

from bidsflux.swarm.plan import desired_service, diff_service

TOP = {"networks": {"net": {"name": "site_net", "external": True}}}
SERVICE = {
    "image": "example/app:1.0",
    "command": ["serve", "--port", "80"],
    "hostname": "app.localhost",
    "environment": {"A": "1"},
    "networks": ["net"],
    "healthcheck": {"test": ["CMD", "true"], "interval": "30s"},
    "deploy": {"replicas": 1, "resources": {"limits": {"memory": "1g"}}},
}


def live_view(service: dict) -> dict:
    """What observe() reports after `docker stack deploy` created `service` (its normalised form)."""
    return desired_service("app", service, TOP)


def test_identical_service_has_no_change() -> None:
    assert diff_service(desired_service("app", SERVICE, TOP), live_view(SERVICE)) == {}


def test_removed_optional_fields_are_changes() -> None:
    for key, path in [("command", ("command",)), ("hostname", ("hostname",)), ("healthcheck", ("healthcheck",)),
                      ("memory_limit", ("deploy", "resources"))]:
        edited = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SERVICE.items()}
        if len(path) == 1:
            del edited[path[0]]
        else:
            del edited[path[0]][path[1]]
        changes = diff_service(desired_service("app", edited, TOP), live_view(SERVICE))
        assert list(changes) == [key], (key, changes)
        assert changes[key]["desired"] is None


def test_removed_environment_variable_is_a_change() -> None:
    edited = dict(SERVICE, environment={})
    changes = diff_service(desired_service("app", edited, TOP), live_view(SERVICE))
    assert list(changes) == ["env"]


def test_environment_changes_name_keys_never_values() -> None:
    secret = "s3cr3t-value-in-an-env-var"
    edited = dict(SERVICE, environment={"A": secret, "B": "new"})
    changes = diff_service(desired_service("app", edited, dict(TOP)), live_view(dict(SERVICE, environment={"A": "1", "C": secret})))
    assert changes["env"] == {"live": ["A", "C"], "desired": {"A": "changed", "B": "added", "C": "removed"}}
    assert secret not in repr(changes) and "'1'" not in repr(changes)


def test_added_extra_hosts_are_a_change_compared_in_swarmkit_form() -> None:
    from bidsflux.swarm.plan import observed_service

    edited = dict(SERVICE, extra_hosts=["gitlab.localhost:host-gateway", "s3.localhost:host-gateway"])
    want = desired_service("app", edited, TOP)
    assert diff_service(want, live_view(SERVICE)) == {
        "hosts": {"live": [], "desired": ["host-gateway gitlab.localhost", "host-gateway s3.localhost"]}}
    # What the engine holds after `docker stack deploy` (ContainerSpec.Hosts, "IP name").
    spec = {"TaskTemplate": {"ContainerSpec": {"Image": "example/app:1.0",
                                               "Hosts": ["host-gateway s3.localhost", "host-gateway gitlab.localhost"]}}}
    assert observed_service(spec, "app", {})["hosts"] == want["hosts"]
