"""GitLab, runner and token-expiry checks against the GitLab emulator (real HTTP, real python-gitlab)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gitlab
import pytest
from ruamel.yaml import YAML

from support import cli
from tls_front import tls_front

pytestmark = pytest.mark.integration


def health(site: Path, emu: Any, *checks: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    # GitLab and its registry at their site URLs (https://<hosts.*>), behind the TLS proxy (`site`).
    args = ["health", "--site", str(site), "--format", "json"]
    for name in checks:
        args += ["--check", name]
    # Nothing from a developer's environment: only what each test passes.
    base = {"BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": "", "BIDSFLUX_SECRET_BIDS_BOT_GITLAB_TOKEN": "",
            "BIDSFLUX_SECRET_GITLAB_ADMIN_TOKEN": "", "BIDSFLUX_SECRET_BIDSFLUX_BOT_GITLAB_TOKEN": "",
            "BIDSFLUX_GITLAB_TOKEN": "", "DICOM_BOT_GITLAB_TOKEN": "", "BIDS_BOT_GITLAB_TOKEN": ""}
    result = cli(*args, env={**base, **(env or {})})
    return result.exit_code, json.loads(result.stdout), result.output


def bot_token(emu: Any, user: str, days: int) -> str:
    if not any(u["username"] == user for u in emu.state.users.values()):
        emu.create_user(user)
    return str(emu.create_token(user, ["api"], expires_at=dt.date.today() + dt.timedelta(days=days)))


@pytest.fixture
def site(site_copy: Callable[..., Path], tmp_path: Path, gitlab_emulator: Any) -> Iterator[Path]:
    """The site with the emulator as GitLab and registry behind the real Caddy (site CA). The
    secrets file holds only the site CA: every credential comes from the environment."""
    path = site_copy(lambda d: None)
    backend = urlsplit(gitlab_emulator.url).netloc
    with tls_front(path, tmp_path / "state", {"gitlab": backend, "registry": backend}):
        yield path


def test_gitlab_ready_registry_and_bot_token(site: Path, gitlab_emulator: Any) -> None:
    token = bot_token(gitlab_emulator, "dicom_bot", 100)
    env = {"BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": token}
    code, data, output = health(site, gitlab_emulator, "gitlab", env=env)
    check = data["checks"][0]
    assert (code, check["status"]) == (0, "ok"), check
    assert "API answers as dicom_bot" in check["reason"]
    assert token not in output

    gitlab_emulator.set_health(ready=False, failing_checks=("db_check",))
    code, data, _ = health(site, gitlab_emulator, "gitlab", env=env)
    assert code == 1 and "db_check" in data["checks"][0]["reason"]

    gitlab_emulator.set_health()
    gitlab_emulator.revoke_token(token)
    code, data, output = health(site, gitlab_emulator, "gitlab", env=env)
    assert code == 1 and "401" in data["checks"][0]["reason"]
    assert token not in output


@pytest.mark.parametrize(("days", "status", "words"), [
    (3, "fail", "(fail within 7)"),
    (20, "warn", "(warn within 30)"),
    (200, "ok", "valid for"),
])
def test_bot_token_expiry(site: Path, gitlab_emulator: Any, days: int, status: str, words: str) -> None:
    # Every bot gitlab.yml issues a token for gets one; only dicom_bot's is close to expiry.
    env, values = {}, []
    for key, logical in bots_with_tokens(site.parent.parent).items():
        values.append(bot_token(gitlab_emulator, key, days if key == "dicom_bot" else 300))
        env[f"BIDSFLUX_SECRET_{logical.upper()}"] = values[-1]
    assert "dicom_bot" in bots_with_tokens(site.parent.parent)
    code, data, output = health(site, gitlab_emulator, "expiry", env=env)
    check = data["checks"][0]
    assert check["status"] == status, check
    assert code == (1 if status == "fail" else 0)
    lines = check["details"] if status != "ok" else [check["reason"]]
    mine = [line for line in lines if "dicom_bot's token" in line]
    assert mine and words in mine[0], check
    if status != "ok":
        assert "bidsflux gitlab tokens rotate dicom_bot" in mine[0]
    assert not any(v in output for v in values)


def bots_with_tokens(repo: Path) -> dict[str, str]:
    """gitlab.yml user key -> the secret name its token is stored under."""
    users = YAML(typ="safe").load((repo / "stack" / "gitlab.yml").read_text()).get("users") or {}
    return {k: (v["token"].get("secret") or f"{k}_gitlab_token") for k, v in users.items() if v.get("token")}


def _fleet(repo: Path) -> dict[str, Any]:
    return dict(YAML(typ="safe").load((repo / "stack" / "runners.yml").read_text())["runners"])


def register_fleet(emu: Any, repo: Path) -> dict[str, int]:
    gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
    gl.auth()
    ids = {}
    for key, spec in _fleet(repo).items():
        # As `bidsflux runners register` does: a runner is known by its runners.yml name.
        created = gl.user.runners.create({"runner_type": "instance_type", "description": key,
                                          "tag_list": spec["tags"], "run_untagged": spec["run_untagged"]})
        ids[key] = created.id
        emu.set_runner_online(created.id, True)
    return ids


def test_runners_online_and_tags_served(site: Path, gitlab_emulator: Any) -> None:
    ids = register_fleet(gitlab_emulator, site.parent.parent)
    env = {"BIDSFLUX_SECRET_GITLAB_ADMIN_TOKEN": gitlab_emulator.admin_token}
    code, data, output = health(site, gitlab_emulator, "runners", env=env)
    check = data["checks"][0]
    assert (code, check["status"]) == (0, "ok"), check
    assert gitlab_emulator.admin_token not in output

    gitlab_emulator.set_runner_online(ids["processing"], False)
    code, data, _ = health(site, gitlab_emulator, "runners", env=env)
    check = data["checks"][0]
    assert code == 1 and check["status"] == "fail"
    assert any(f"runner processing (#{ids['processing']}) is offline" in d for d in check["details"]), check

    # The deploy runner is the only one serving the `deploy` job's tags: its going offline
    # leaves that job without a runner.
    gitlab_emulator.set_runner_online(ids["deploy"], False)
    code, data, _ = health(site, gitlab_emulator, "runners", env=env)
    assert any("CI job deploy needs dind" in d and "no online runner serves it" in d
               for d in data["checks"][0]["details"]), data


def test_unregistered_runner_and_missing_admin_token(site: Path, gitlab_emulator: Any) -> None:
    code, data, _ = health(site, gitlab_emulator, "runners")
    assert code == 1 and "no admin token" in data["checks"][0]["reason"]
    assert data["checks"][0]["fix"].startswith("set BIDSFLUX_SECRET_")
    env = {"BIDSFLUX_SECRET_GITLAB_ADMIN_TOKEN": gitlab_emulator.admin_token}
    code, data, _ = health(site, gitlab_emulator, "runners", env=env)
    assert code == 1 and any("runner deploy is not registered in GitLab" in d for d in data["checks"][0]["details"])


def test_runner_contact_window_comes_from_site(site: Path, gitlab_emulator: Any) -> None:
    import datetime as dt

    from ruamel.yaml import YAML as RoundTrip

    ids = register_fleet(gitlab_emulator, site.parent.parent)
    five_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    for runner_id in ids.values():
        gitlab_emulator.set_runner_online(runner_id, True, contacted_at=five_minutes_ago)
    env = {"BIDSFLUX_SECRET_GITLAB_ADMIN_TOKEN": gitlab_emulator.admin_token}
    code, data, _ = health(site, gitlab_emulator, "runners", env=env)
    assert (code, data["checks"][0]["status"]) == (0, "ok"), "5 minutes is within the default 15"
    yaml = RoundTrip()
    doc = yaml.load(site.read_text())
    doc["health"]["runner_contact_minutes"] = 2
    with site.open("w") as fh:
        yaml.dump(doc, fh)
    code, data, _ = health(site, gitlab_emulator, "runners", env=env)
    check = data["checks"][0]
    assert check["status"] == "warn" and "last contact 5 min ago" in check["reason"], data
