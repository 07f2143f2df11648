"""The real Mercure 0.4.1, built from its source (tests/mercure/mercure_images.py), started by
`bidsflux mercure up`: every service runs and `health` sees each; the generated admin logs in and
the seed admin/router does not; C-ECHO; a synthetic study sent with C-STORE is routed by the
repository's rule to its module, which Mercure's processor starts through the Docker socket (a
recorder image: arguments, environment, secret files); the bookkeeper has the events. Then
`mercure push` with a changed rule applies to the next study (with a rotated module secret and a
persistence folder Mercure mounts from its host path), a
receiver setting restarts the receiver, and kill -9 during push leaves a config Mercure loads.

Mercure's processor finds its data folder through the Docker volume named `mercure_data`, so one
Mercure runs per Docker engine: runs of this module take a machine-wide lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from mercure_images import TARBALL, MercureImages, build
from mercure_testlib import edit, free_port, synthetic_study
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from bidsflux.health.dicom import c_echo
from bidsflux.mercure import install
from bidsflux.swarm.secretstore import read_values_file, write_values_file
from support import cli, copy_repository, require

pytestmark = pytest.mark.integration
AE_TITLE = "BIDSFLUX"
BUSYBOX = "busybox:stable-musl"  # what Mercure's processor runs to chown module output
MACHINE_LOCK = "/tmp/bidsflux-real-mercure.lock"
SECRETS = {"s3_id": "AKIAREALMERCURE01", "s3_secret": "s3-secret-real-mercure", "dicom_bot_gitlab_token": "glpat-real-mercure"}


@dataclass
class Running:
    repo: Path
    base: Path
    values_file: Path
    project: str
    dicom_port: int
    web_port: int
    images: MercureImages
    up_output: str
    up_seconds: float

    def container(self, service: str) -> Any:
        import docker

        found = docker.from_env().containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        assert len(found) == 1, (service, found)
        return found[0]

    def psql(self, sql: str) -> list[str]:
        out = self.container("db").exec_run(["psql", "-U", "mercure", "-d", "mercure", "-tAc", sql], user="postgres")
        assert out.exit_code == 0, out.output
        return out.output.decode().split("\n")[:-1]

    def states(self) -> str:
        """Each container of the project and its state, for failure messages."""
        from bidsflux.mercure.compose import service_states

        return "; ".join(f"{st.service}: {st.containers}/{st.wanted} {', '.join(st.problems) or 'ok'} "
                         f"(restarts {st.restarts})" for st in service_states(self.project))

    def bidsflux(self, *args: str) -> Any:
        return cli(*args, "--root", str(self.repo))


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def wait_for(what: str, fn: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(every)


def compose_down(base: Path, project: str) -> None:
    if (base / "docker-compose.yml").exists():
        subprocess.run(["docker-compose", "-p", project, "-f", str(base / "docker-compose.yml"), "down", "-v",
                        "--remove-orphans", "-t", "3"], capture_output=True, cwd=base)
    # Mercure's processor runs busybox without removing it; only ours (mounting our folders) go.
    for cid in docker("ps", "-aq", "--filter", f"ancestor={BUSYBOX}").stdout.split():
        mounts = docker("inspect", "-f", "{{range .Mounts}}{{.Source}} {{end}}", cid, check=False).stdout
        if str(base) in mounts:
            docker("rm", "-f", cid, check=False)
    if str(base) in docker("volume", "inspect", "-f", "{{.Options.device}}", "mercure_data", check=False).stdout:
        docker("volume", "rm", "mercure_data", check=False)


@pytest.fixture(scope="module")
def mercure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require(os.geteuid() == 0, "running Mercure with its own uid and folders needs root")
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed (apt-get install docker-compose)")
    require(TARBALL.exists(), f"Mercure's source {TARBALL} is missing")
    require(docker("info", check=False).returncode == 0, "no Docker engine")
    lock = os.open(MACHINE_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # one real Mercure per engine (fixed volume name); waits for another run
    images = build(lambda m: print(m, file=sys.stderr, flush=True))
    existing = docker("volume", "inspect", "mercure_data", check=False)
    require(existing.returncode != 0, "a Mercure already runs on this Docker engine (volume mercure_data exists)")
    tagged_busybox = docker("image", "inspect", BUSYBOX, check=False).returncode != 0
    if tagged_busybox:
        docker("tag", images.busybox, BUSYBOX)
    tmp = tmp_path_factory.mktemp("real-mercure")
    repo = copy_repository(tmp / "repo")
    base, state = tmp / "mercure", tmp / "state"
    dicom_port, web_port = free_port(), free_port()
    site = repo / "stack" / "site.yml"
    for old, new in [
        ("    path: /srv/bidsflux/mercure", f"    path: {base}"),
        ("    path: /var/lib/bidsflux\n", f"    path: {state}\n"),
        ("  file: /var/lib/bidsflux/secrets.env", f"  file: {state}/secrets.env"),
        ("  dicom: 11112", f"  dicom: {dicom_port}"),
        ("  mercure_web: 8000", f"  mercure_web: {web_port}"),
        ("  dicom: dicom.localhost", "  dicom: 127.0.0.1"),
        ("  mercure_prefix: mercureimaging/mercure-", f"  mercure_prefix: {images.prefix}"),
        ('  mercure_tag: "0.4.1"', f'  mercure_tag: "{images.tag}"'),
        ("  postgres: postgres:16-alpine", f"  postgres: {images.postgres}"),
        ("  redis: redis:7-alpine", f"  redis: {images.redis}"),
        # The repository's indexer module runs the recorder instead of the real indexer.
        ("  dicom_indexer: registry.localhost/ni-dataops/containers/dicom_indexer:0.1.0", f"  dicom_indexer: {images.module}"),
    ]:
        edit(site, old, new)
    # Series complete after 3 s instead of 60 so that a study is routed within the test.
    edit(repo / "stack" / "mercure" / "rules.yml", "series_complete_trigger: 60", "series_complete_trigger: 3")
    state.mkdir(mode=0o700)
    write_values_file(state / "secrets.env", SECRETS)
    project = f"bfmt{secrets.token_hex(3)}"
    try:
        started = time.monotonic()
        result = cli("mercure", "up", "--root", str(repo), "--project-name", project, "--timeout", "300")
        took = time.monotonic() - started
        assert result.exit_code == 0, result.output
        yield Running(repo, base, state / "secrets.env", project, dicom_port, web_port, images, result.output, took)
    finally:
        compose_down(base, project)
        if tagged_busybox:
            docker("rmi", BUSYBOX, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(lock)


def send_study(port: int, series: dict[str, int]) -> str:
    study = synthetic_study(series)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in study]
    finally:
        assoc.release()
    assert statuses == [0] * len(study)
    return str(study[0].StudyInstanceUID)


def processed(m: Running, study_uid: str, timeout: float = 180) -> Path:
    """The success folder of `study_uid`'s processing task, once the module's record is complete."""
    def find() -> Path | None:
        for task in (m.base / "data" / "success").glob("*/task.json"):
            with contextlib.suppress(ValueError, OSError):
                if json.loads(task.read_text())["info"]["uid"] == study_uid and (task.parent / "id.txt").exists():
                    return task.parent
        return None

    return wait_for(f"study {study_uid} to be processed", find, timeout)


def record(folder: Path, name: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (folder / name).read_text().splitlines() if "=" in line)


def test_up_starts_every_service_and_health_sees_each(mercure: Running) -> None:
    m = mercure
    print(f"mercure up: {m.up_seconds:.1f}s; images built this run: {len(m.images.built)} in {m.images.seconds:.1f}s")
    values = read_values_file(m.values_file)
    for key in (install.SECRET_KEY_KEY, install.DB_PASSWORD_KEY, install.REDIS_PASSWORD_KEY, install.BOOKKEEPER_KEY,
                install.WEB_PASSWORD_KEY):
        assert values[key] not in m.up_output
    # Redis refuses clients without the generated password.
    redis = m.container("redis")
    assert b"NOAUTH" in redis.exec_run(["redis-cli", "ping"]).output
    assert redis.exec_run(["redis-cli", "-a", values[install.REDIS_PASSWORD_KEY], "--no-auth-warning", "ping"]).output.strip() == b"PONG"
    # The processor runs as Mercure's uid with the Docker socket's group, as upstream.
    assert m.container("processor").attrs["Config"]["User"] == f"1000:{os.stat('/var/run/docker.sock').st_gid}"

    site = m.repo / "stack" / "site.yml"

    def health() -> dict[str, Any]:
        # A generous timeout: the machine running the tests may be loaded (the check's own is 15 s).
        # Mercure's UI as it publishes it (ports.mercure_web): this test runs no TLS proxy in front.
        result = cli("health", "--site", str(site), "--format", "json", "--check", "dicom", "--timeout", "60",
                     "--endpoint", f"mercure_web=http://127.0.0.1:{m.web_port}")
        return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "dicom")

    ok = health()
    assert ok["status"] == "ok", (ok, m.states())
    assert any(f"all {len(install.SERVICES)} Mercure services running (13 containers" in d for d in ok["details"]), ok
    router = m.container("router")
    router.stop(timeout=2)
    try:
        bad = health()
        assert bad["status"] == "fail" and bad["reason"].startswith("Mercure services not running: router: "), bad
        assert "exited" in bad["reason"]
    finally:
        router.start()
    wait_for("the router to run again", lambda: health()["status"] == "ok", 60)


def test_generated_admin_logs_in_and_the_seed_does_not(mercure: Running) -> None:
    m = mercure
    values = read_values_file(m.values_file)
    url = f"http://127.0.0.1:{m.web_port}"
    seed = requests.post(f"{url}/login", data={"username": "admin", "password": "router"}, allow_redirects=False, timeout=10)
    assert seed.status_code == 200 and "mercure_session" not in seed.cookies, (seed.status_code, seed.text[:300], m.states())
    s = requests.Session()
    ok = s.post(f"{url}/login", data={"username": values[install.WEB_USER_KEY], "password": values[install.WEB_PASSWORD_KEY]},
                allow_redirects=False, timeout=10)
    assert ok.status_code == 303 and ok.headers["location"] == "/", (ok.status_code, ok.text[:300], m.states())
    page = s.get(f"{url}/rules", timeout=10)
    assert page.status_code == 200 and "mr_completed_study" in page.text
    # The bookkeeper recorded both attempts.
    events = wait_for("login events in the bookkeeper", lambda: {tuple(r.split("|")) for r in m.psql(
        "select event, \"user\" from webgui_events")} >= {("LOGIN", values[install.WEB_USER_KEY]), ("LOGIN_FAIL", "admin")}, 60)
    assert events


def test_study_is_routed_to_the_module_with_its_secrets(mercure: Running) -> None:
    m = mercure
    assert c_echo("127.0.0.1", m.dicom_port, AE_TITLE).ok
    study_uid = send_study(m.dicom_port, {"MRSI": 2, "STAGE_preproc": 2, "T1w": 1})
    out = processed(m, study_uid)
    args = (out / "args.txt").read_text().splitlines()
    module = json.loads((m.base / "config" / "mercure.json").read_text())["modules"]["dicom_indexer"]
    assert args == json.loads(module["docker_arguments"])["command"]  # exactly the rendered command line
    assert args[-1] == "/tmp/data" and "--gitlab-url" in args and "--session-name-tag" in args
    env = record(out, "env.txt")
    assert env["CI_SERVER_HOST"] == "gitlab.localhost" and env["GITLAB_BOT_USERNAME"] == "dicom_bot"
    assert env["LOG_LEVEL"] == "INFO" and env["MERCURE_IN_DIR"] == "/tmp/data"
    assert not [k for k in env if "TOKEN" in k or "SECRET" in k]  # secrets come as files only
    assert record(out, "secrets.txt") == SECRETS
    assert len([n for n in (out / "inputs.txt").read_text().split() if n.endswith(".dcm")]) == 5
    # The indexer module runs as root (support_root_modules), Mercure dropping every capability.
    assert (out / "id.txt").read_text().startswith("uid=0(root) " if module["requires_root"] else "uid=1000 ")
    task_id = json.loads((out / "task.json").read_text())["id"]
    events = wait_for("the task's events in the bookkeeper", lambda: {r.split("|")[0] for r in m.psql(
        f"select event, sender from task_events where task_id = '{task_id}'")} >= {"PROCESS_BEGIN", "PROCESS_MODULE_COMPLETE", "COMPLETE"}, 60)
    assert events
    assert m.psql(f"select count(*) from dicom_series where study_uid = '{study_uid}'") == ["3"]


def test_pushed_rule_applies_to_the_next_study_and_rotated_secrets_reach_the_module(mercure: Running) -> None:
    m = mercure
    rules = m.repo / "stack" / "mercure" / "rules.yml"
    # Under the old rule a T1w-only study waits for MRSI and STAGE_preproc (forced after 90 min).
    edit(rules, "study_trigger_series: \"'MRSI' and 'STAGE_preproc'\"", "study_trigger_series: \"'T1w'\"")
    edit(rules, "      LOG_LEVEL: INFO", "      LOG_LEVEL: DEBUG")
    edit(rules, "    network_enabled: true", "    network_enabled: true\n    requires_persistence: true")
    result = m.bidsflux("mercure", "push")
    assert result.exit_code == 0 and "receiver settings changed" not in result.output, result.output
    write_values_file(m.values_file, {"s3_secret": "s3-secret-rotated"})
    out = processed(m, send_study(m.dicom_port, {"T1w": 2}))
    assert record(out, "env.txt")["LOG_LEVEL"] == "DEBUG"
    # Its persistence folder: made by the processor, mounted from the same path on the host.
    assert record(out, "env.txt")["MODULE_PERSISTENCE_DIR"] == "/tmp/persistence"
    assert (out / "persistence.txt").read_text().startswith("d") and (m.base / "persistence" / "dicom_indexer").is_dir()
    assert record(out, "secrets.txt") == {**SECRETS, "s3_secret": "s3-secret-rotated"}


def test_receiver_setting_change_restarts_the_receiver(mercure: Running) -> None:
    m = mercure
    before = m.container("receiver").attrs["State"]["StartedAt"]
    edit(m.repo / "stack" / "mercure" / "rules.yml", "    ae_title: BIDSFLUX", "    ae_title: BIDSFLUX\n    accept_compressed_images: true")
    result = m.bidsflux("mercure", "push")
    assert result.exit_code == 0 and "receiver settings changed (accept_compressed_images); restarted" in result.output, result.output
    receiver = m.container("receiver")
    assert receiver.attrs["State"]["StartedAt"] != before
    wait_for("the receiver to start with the new setting",
             lambda: b"Accepting all supported transfer syntaxes" in receiver.logs(since=int(time.time()) - 60), 30)
    wait_for("C-ECHO after the restart", lambda: c_echo("127.0.0.1", m.dicom_port, AE_TITLE, timeout=2).ok, 30)


LOAD_WITH_MERCURE = ("import json, sys; sys.path.insert(0, '/opt/mercure/app'); from common.types import Config; "
                     "c = Config(**json.load(open('/opt/mercure/config/mercure.json'))); print(len(c.rules))")


def test_kill_during_push_leaves_a_config_mercure_loads(mercure: Running) -> None:
    m = mercure
    rules = m.repo / "stack" / "mercure" / "rules.yml"
    config = m.base / "config" / "mercure.json"
    router = m.container("router")
    code = ("import sys; from bidsflux.cli import main; "
            "sys.argv = ['bidsflux', 'mercure', 'push', '--no-restart', '--root', sys.argv[1]]; main()")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    rnd = random.Random(13)
    for i in range(5):
        text = rules.read_text()
        comment = "comment: run the indexer once both key series have arrived"
        rules.write_text(text.replace(comment, f"comment: kill round {i}") if comment in text else
                         text.replace(f"comment: kill round {i - 1}", f"comment: kill round {i}"))
        proc = subprocess.Popen([sys.executable, "-c", code, str(m.repo)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.4, 1.6))
        proc.kill()
        proc.wait()
        json.loads(config.read_text())  # complete, never partial
        loaded = router.exec_run(["/opt/mercure/env/bin/python", "-c", LOAD_WITH_MERCURE])
        assert loaded.exit_code == 0 and loaded.output.strip() == b"1", loaded.output
    # A lock left by a killed push is recognised as stale by the next push, which completes.
    result = m.bidsflux("mercure", "push", "--no-restart", "--lock-timeout", "5")
    assert result.exit_code == 0, result.output
    assert not (m.base / "config" / "mercure.lock").exists()
    assert json.loads(config.read_text())["rules"]["mr_completed_study"]["comment"] == "kill round 4"
    # Mercure's own reader (which refuses while mercure.lock exists) takes the new file.
    read = router.exec_run(["/opt/mercure/env/bin/python", "-c",
                            "import sys; sys.path.insert(0, '/opt/mercure/app'); from common import config; "
                            "config.read_config(); print(config.mercure.rules['mr_completed_study'].comment)"])
    assert read.exit_code == 0 and b"kill round 4" in read.output.splitlines(), read.output
    assert len(list(config.parent.glob("mercure.json.*.bak"))) <= 5
