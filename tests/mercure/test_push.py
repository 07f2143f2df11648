"""`mercure plan|push` against a real config folder: Mercure's lock is respected (wait, then fail
without writing), writes are atomic with a timestamped backup, unmanaged settings survive, an
unchanged config keeps its mtime, the lock goes away even on error, and no secret is shown."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mercure_testlib import REFERENCE, edit

from bidsflux.diagnostics import UserError
from bidsflux.mercure import config as mc
from bidsflux.mercure.cli import push
from bidsflux.site.repository import open_repository
from bidsflux.site.yamlsource import load
from support import cli

BOOKKEEPER_SECRET = "bk-9f2d61c0e5a7-do-not-show"


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """A config folder holding a live mercure.json with settings the site does not manage."""
    d = tmp_path / "config"
    d.mkdir()
    data = json.loads(REFERENCE.read_text())
    data["bookkeeper_api_key"] = BOOKKEEPER_SECRET
    data["appliance_name"] = "scanner-room-2"
    data["retention"] = 123456
    data["rules"]["gui_made_rule"] = dict(data["rules"]["mr_completed_study"], rule="tags.Modality == 'CT'")
    (d / "mercure.json").write_text(json.dumps(data, indent=4))
    return d


def run(repo: Path, live: Path, *args: str):  # type: ignore[no-untyped-def]
    return cli("mercure", *args, "--root", str(repo), "--config-dir", str(live))


def test_push_merges_keeps_unmanaged_and_leaves_a_backup(repo: Path, live: Path) -> None:
    before = (live / "mercure.json").read_text()
    plan = run(repo, live, "plan")
    assert plan.exit_code == 2, plan.output
    assert BOOKKEEPER_SECRET not in plan.output
    result = run(repo, live, "push", "--no-restart")
    assert result.exit_code == 0, result.output
    assert BOOKKEEPER_SECRET not in result.output and "-    " in result.output  # the diff was shown
    new = json.loads((live / "mercure.json").read_text())
    assert mc.model_problems(new) == []
    assert new["bookkeeper_api_key"] == BOOKKEEPER_SECRET
    assert new["appliance_name"] == "scanner-room-2" and new["retention"] == 123456
    assert "gui_made_rule" in new["rules"]
    assert new["rules"]["mr_completed_study"]["comment"] == "run the indexer once both key series have arrived"
    backups = list(live.glob("mercure.json.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == before
    assert not (live / "mercure.lock").exists()
    assert [p.name for p in live.iterdir() if p.name.startswith(".")] == []
    # Now in sync: plan says so, and --prune would remove only the GUI rule.
    assert run(repo, live, "plan").exit_code == 0
    pruned = run(repo, live, "plan", "--prune")
    assert pruned.exit_code == 2 and "gui_made_rule" in pruned.output


def test_unchanged_push_leaves_the_file_alone(repo: Path, live: Path) -> None:
    assert run(repo, live, "push", "--no-restart").exit_code == 0
    target = live / "mercure.json"
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    content = target.read_bytes()
    result = run(repo, live, "push", "--no-restart")
    assert result.exit_code == 0 and "up to date" in result.output
    assert target.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert target.read_bytes() == content
    assert len(list(live.glob("*.bak"))) == 1


def test_lock_held_by_another_process_makes_push_wait_then_fail(repo: Path, live: Path) -> None:
    target = live / "mercure.json"
    before, mtime = target.read_bytes(), target.stat().st_mtime_ns
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); p.write_text('gui'); "
                               "print('held', flush=True); time.sleep(60)", str(live / "mercure.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        result = run(repo, live, "push", "--no-restart", "--lock-timeout", "1.5")
        waited = time.monotonic() - start
        assert result.exit_code == 1
        assert "mercure.lock" in result.output and "nothing was written" in result.output
        assert waited >= 1.5
        assert target.read_bytes() == before and target.stat().st_mtime_ns == mtime
        assert (live / "mercure.lock").read_text() == "gui"  # someone else's lock is left alone
        assert list(live.glob("*.bak")) == []
    finally:
        holder.kill()
        holder.wait()
    (live / "mercure.lock").unlink()
    assert run(repo, live, "push", "--no-restart").exit_code == 0


def test_lock_is_removed_when_the_write_fails(repo: Path, live: Path) -> None:
    r = open_repository(root=repo)
    site = load(r.site_file, r.root).data
    rules = load(r.mercure_rules, r.root)
    target = live / "mercure.json"
    before = target.read_bytes()
    # A real failure: the temporary file's name is taken, so the write cannot start.
    blocker = live / f".mercure.json.tmp-{os.getpid()}"
    blocker.mkdir()
    with pytest.raises(UserError, match="cannot write"):
        push(r, site, rules, live, lock_timeout=1, restart=False)
    assert not (live / "mercure.lock").exists()
    assert target.read_bytes() == before and blocker.is_dir()


def test_killing_push_mid_write_leaves_old_or_new_file(repo: Path, live: Path) -> None:
    target = live / "mercure.json"
    old = json.loads(target.read_text())
    seen = set()
    code = ("import sys; from bidsflux.cli import main; "
            "sys.argv = ['bidsflux', 'mercure', 'push', '--no-restart', '--root', sys.argv[1], '--config-dir', sys.argv[2]]; main()")
    rnd = random.Random(5)
    for _ in range(6):
        target.write_text(json.dumps(old, indent=4))
        (live / "mercure.lock").unlink(missing_ok=True)  # a killed push may leave its lock behind
        proc = subprocess.Popen([sys.executable, "-c", code, str(repo), str(live)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.3, 1.5))
        proc.kill()
        proc.wait()
        data = json.loads(target.read_text())  # never partial
        seen.add("old" if data == old else "new")
        if data != old:
            assert data["rules"]["mr_completed_study"]["comment"] == "run the indexer once both key series have arrived"
    assert seen  # both outcomes are allowed; a partial file would have failed json.loads above


def test_no_secret_values_in_config_or_output(repo: Path, live: Path, tmp_path: Path) -> None:
    values = {"dicom_bot_gitlab_token": "glpat-s3cr3t-token-value", "s3_id": "AKIAEXAMPLEID123",
              "s3_secret": "wJalrXUtnFEMI-s3-secret-value"}
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    edit(repo / "stack" / "site.yml", "  file: /var/lib/bidsflux/secrets.env", f"  file: {secrets_file}")
    outputs = [run(repo, live, "plan").output, run(repo, live, "push", "--no-restart").output,
               cli("mercure", "render", "--root", str(repo)).output]
    text = (live / "mercure.json").read_text()
    for value in values.values():
        assert value not in text
        for out in outputs:
            assert value not in out
    env = json.loads(json.loads(text)["modules"]["dicom_indexer"]["environment"])
    assert not [k for k in env if mc.SECRET_KEYS & {k.lower()} or "TOKEN" in k or "SECRET" in k]


def test_receiver_change_is_reported_and_restart_failure_is_clear(repo: Path, live: Path, no_docker_env: dict) -> None:
    assert run(repo, live, "push", "--no-restart").exit_code == 0
    edit(repo / "stack" / "mercure" / "rules.yml", "    port: 11112", "    port: 11113")
    # the compose file publishes ports.dicom to the same container port (validate checks they agree)
    edit(repo / "stack" / "mercure" / "docker-compose.yml", "{{ ports.dicom }}:11112", "{{ ports.dicom }}:11113")
    plan = run(repo, live, "plan")
    assert plan.exit_code == 2 and "receiver settings change (port)" in plan.output
    result = cli("mercure", "push", "--root", str(repo), "--config-dir", str(live), env=no_docker_env)
    assert result.exit_code == 1
    assert "mercure.json was written" in result.output and "receiver" in result.output
    assert json.loads((live / "mercure.json").read_text())["port"] == 11113


def test_json_plan_lists_changes_by_name_without_values(repo: Path, live: Path) -> None:
    result = run(repo, live, "plan", "--format", "json")
    assert result.exit_code == 2, result.output
    plan = json.loads(result.output)
    assert {"kind": "rule", "action": "update", "name": "mr_completed_study"}.items() <= next(
        c for c in plan["changes"] if c["name"] == "mr_completed_study").items()
    assert all(c["name"] != "gui_made_rule" for c in plan["changes"]), "unmanaged rules are not touched without --prune"
    assert BOOKKEEPER_SECRET not in result.output
    assert run(repo, live, "push", "--no-restart").exit_code == 0
    again = run(repo, live, "plan", "--format", "json")
    assert again.exit_code == 0 and json.loads(again.output)["changes"] == []
