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
