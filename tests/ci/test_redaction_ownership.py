"""Values never shown (URLs, token shapes, known values, env of plans, notes and issues), secret
ownership (what `secrets rotate` may make anew) and runner mounts resolved from site.yml."""

from __future__ import annotations

import pytest

from bidsflux.ci.reports import Problem, plan_note_body, scrub_problems
from bidsflux.diagnostics import UserError
from bidsflux.gitlab.runners import mount_volumes, runner_specs
from bidsflux.redact import known_values, scrub
from bidsflux.site.render import secret_owner, secret_renewal
from bidsflux.swarm.rotation import choose

SECRET = "Zq9-known-secret-value-42"


def test_scrub_hides_known_values_token_shapes_and_url_credentials() -> None:
    text = f"value {SECRET}; token glpat-abcdefghijklmnop; clone https://oauth2:tok3n@git.example/x.git"
    out = scrub(text, [SECRET])
    assert SECRET not in out and "abcdefghijklmnop" not in out and "tok3n" not in out
    assert "https://****@git.example/x.git" in out and "glpat-****" in out


def test_known_values_come_from_the_store_and_the_jobs_secret_variables() -> None:
    env = {"BIDSFLUX_SECRET_S3_ID": "AKIA0123456789", "BIDSFLUX_GITLAB_TOKEN": "glpat-xyzxyzxyz", "HOME": "/root"}
    assert set(known_values(env, ["stored-value-1"])) == {"AKIA0123456789", "glpat-xyzxyzxyz", "stored-value-1"}


def test_plan_note_and_issue_bodies_are_scrubbed() -> None:
    plans = {"swarm": {"changes": [{"kind": "service", "action": "update", "name": "s", "fields": {"env": {}},
                                    "note": f"leaked {SECRET}"}]}}
    body = plan_note_body(plans, None, [SECRET])
    assert SECRET not in body and "****" in body
    (problem,) = scrub_problems([Problem("swarm", f"title {SECRET}", f"body {SECRET}")], [SECRET])
    assert SECRET not in problem.title + problem.body


def test_owner_follows_the_generate_kind_unless_stated() -> None:
    assert secret_owner({"generate": "password"}) == "generated"
    assert secret_owner({"generate": "runner_config"}) == "registered"
    assert secret_owner({"generate": "placeholder"}) == "minted"
    assert secret_owner({"generate": "password", "owner": "provided"}) == "provided"
    assert secret_renewal({"generate": "runner_config", "renew": "bidsflux runners register --only x"}).endswith("--only x")


CATALOG = {"a_password": {"generate": "password"}, "runner_x": {"generate": "runner_config", "renew": "bidsflux runners register --only x"},
           "bot_token": {"generate": "placeholder", "owner": "minted", "renew": "bidsflux gitlab tokens rotate bot"}}


def test_all_rotates_generated_only_and_lists_the_rest() -> None:
    chosen, skipped = choose(CATALOG, [], sorted(CATALOG))
    assert chosen == ["a_password"]
    assert skipped == ["skipped bot_token (minted): renew it with `bidsflux gitlab tokens rotate bot`",
                       "skipped runner_x (registered): renew it with `bidsflux runners register --only x`"]


def test_naming_a_registered_secret_is_refused_with_its_command() -> None:
    with pytest.raises(UserError, match=r"runner_x is registered.*bidsflux runners register --only x.*nothing was changed"):
        choose(CATALOG, ["a_password", "runner_x"], None)
    assert choose(CATALOG, ["a_password"], None) == (["a_password"], [])


SITE = {"paths": {"state_dir": {"path": "/var/lib/bidsflux"}, "mercure_base": {"path": "/srv/mercure"}},
        "secrets": {"file": "/etc/bidsflux/secrets.env"}}


def test_mounts_resolve_to_host_paths_at_the_same_place() -> None:
    assert mount_volumes(["docker_socket", "state", "mercure_config:ro"], SITE) == [
        "/var/run/docker.sock:/var/run/docker.sock", "/var/lib/bidsflux:/var/lib/bidsflux",
        "/etc/bidsflux:/etc/bidsflux", "/srv/mercure/config:/srv/mercure/config:ro"]
    (spec,) = runner_specs({"runners": {"r": {"service": "s", "tags": [], "executor": "docker",
                                              "docker": {"image": "i", "mounts": ["state"], "volumes": ["/cache"]}}}}, SITE)
    assert spec.docker["volumes"] == ["/var/lib/bidsflux:/var/lib/bidsflux", "/etc/bidsflux:/etc/bidsflux", "/cache"]
    assert "mounts" not in spec.docker


def test_gitlab_plan_shows_a_mirror_url_without_its_credentials() -> None:
    from bidsflux.gitlab.objects import Desired, Observed, ProjectSpec, diff

    want = Desired(projects=[ProjectSpec("ni-dataops/tools", "https://bot:glpat-0123456789abcdef@git.example/tools.git",
                                         False, {}, {})])
    plan = diff(want, Observed(groups={"ni-dataops": {"id": 1}}, projects={"ni-dataops/tools": None}))
    shown = plan.to_json() + "\n".join(plan.lines())
    assert "glpat-0123456789abcdef" not in shown and "bot:" not in shown
    assert "https://****@git.example/tools.git" in shown
