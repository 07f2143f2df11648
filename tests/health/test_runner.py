"""The run itself: deadlines against hung endpoints and never-returning checks, JUnit and JSON output,
disk thresholds, secret scrubbing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bidsflux.health import checks as health
from support import cli


def test_hung_endpoint_times_out_within_its_limit_and_the_process_ends(site_copy: Callable[..., Path], hung_endpoint: str) -> None:
    site = site_copy(lambda d: None)
    limit = 2.0
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from bidsflux.cli import main; main()", "health", "--site", str(site), "--check", "gitlab", "--check", "disks",
         "--timeout", str(limit), "--format", "json",
         "--endpoint", f"gitlab=http://{hung_endpoint}", "--endpoint", f"registry=http://{hung_endpoint}"],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": str(site.parent)},
    )
    wall = time.monotonic() - start
    data = json.loads(proc.stdout)
    gitlab = next(c for c in data["checks"] if c["name"] == "gitlab")
    assert proc.returncode == 1 and gitlab["status"] == "fail", proc.stdout + proc.stderr
    assert "did not answer within" in gitlab["reason"] or "no result within" in gitlab["reason"], gitlab
    assert gitlab["elapsed"] <= limit + 0.5
    # The other check was not held up by the hung one.
    disks = next(c for c in data["checks"] if c["name"] == "disks")
    assert disks["elapsed"] < 1.0
    # Interpreter start-up and imports are included in the wall time.
    assert wall < limit + 5, wall


def test_a_check_whose_thread_never_returns_still_ends_the_run(tmp_path: Path, site_copy: Callable[..., Path]) -> None:
    site = site_copy(lambda d: None)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import threading
        from bidsflux.health import checks as health
        from bidsflux.cli import main

        @health.check("stuck", timeout=60, summary="never returns")
        def stuck(ctx, report, timeout):
            report.step = "an answer that never comes"
            threading.Event().wait()

        main(["health", "--site", {str(site)!r}, "--check", "stuck", "--check", "disks", "--timeout", "1", "--format", "json"])
    """))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - start
    data = json.loads(proc.stdout)
    stuck = next(c for c in data["checks"] if c["name"] == "stuck")
    assert proc.returncode == 1 and stuck["status"] == "fail"
    assert stuck["reason"] == "no result within 1s (was waiting for: an answer that never comes)"
    assert wall < 10, wall


def test_run_checks_respects_each_checks_own_deadline() -> None:
    release = threading.Event()

    def slow(ctx: Any, report: health.Report, timeout: float) -> None:
        report.step = "the slow thing"
        release.wait(10)
        report.ok("late")

    def quick(ctx: Any, report: health.Report, timeout: float) -> None:
        report.ok("fine")

    ctx = health.Context(site={}, endpoints={}, secrets=health.Secrets(None, {}))
    checks = [health.Check("slow", slow, 0.5, ""), health.Check("quick", quick, 5, "")]
    start = time.monotonic()
    results = health.run_checks(checks, ctx)
    release.set()
    assert time.monotonic() - start < 1.5
    assert [(r.name, r.status.value) for r in results] == [("slow", "fail"), ("quick", "ok")]
    assert "the slow thing" in results[0].reason


def test_secrets_never_appear_in_results() -> None:
    secret = "glpat-supersecretvalue123"

    def leaky(ctx: health.Context, report: health.Report, timeout: float) -> None:
        token = ctx.secrets.get("dicom_bot_gitlab_token")
        report.fail(f"server said: bad token {token}", f"try {token} again")

    def crashing(ctx: health.Context, report: health.Report, timeout: float) -> None:
        raise RuntimeError(f"boom with {ctx.secrets.get('s3_secret')}")

    ctx = health.Context(site={}, endpoints={}, secrets=health.Secrets(None, {
        "BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": secret, "S3_SECRET": "s3-secret-value-xyz"}))
    results = health.run_checks([health.Check("leaky", leaky, 5, ""), health.Check("crashing", crashing, 5, "")], ctx)
    text = json.dumps([r.to_dict() for r in results])
    assert secret not in text and "s3-secret-value-xyz" not in text
    assert "***" in results[0].reason and "***" in results[1].reason


def test_secrets_come_from_the_values_file_bootstrap_writes_and_env_overrides(tmp_path: Path) -> None:
    from bidsflux.swarm.secretstore import write_values_file

    path = tmp_path / "secrets.env"
    write_values_file(path, {"s3_id": "AKID1", "s3_secret": "with space and # hash", "MERCURE_WEB_USER": "admin1"})
    secrets = health.Secrets(path, {"BIDSFLUX_SECRET_S3_ID": "AKID-ENV", "CI_TOKEN": "from-ci"})
    assert secrets.get("s3_id") == "AKID-ENV"
    assert secrets.get("s3_secret") == "with space and # hash"
    assert secrets.get("mercure_web_user") == "admin1"
    assert secrets.get("dicom_bot_gitlab_token", ("CI_TOKEN",)) == "from-ci"
    assert secrets.get("absent") is None
    missing = health.Secrets(tmp_path / "nope.env", {})
    assert missing.get("s3_id") is None
    assert "does not exist on this host" in missing.how_to_provide("s3_id")
    assert missing.how_to_provide("s3_id").startswith("set BIDSFLUX_SECRET_S3_ID")


@pytest.mark.parametrize(("warn", "fail", "status"), [(100, 100, "ok"), (1, 100, "warn"), (1, 1, "fail")])
def test_disk_thresholds(site_copy: Callable[..., Path], tmp_path: Path, warn: int, fail: int, status: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def paths(d: Any) -> None:
        for value in d["paths"].values():
            for item in value if isinstance(value, list) else [value]:
                item["path"] = str(data_dir)
        d["health"]["disk_warn_percent"] = warn
        d["health"]["disk_fail_percent"] = fail

    result = cli("health", "--site", str(site_copy(paths)), "--check", "disks", "--format", "json")
    disks = json.loads(result.stdout)["checks"][0]
    assert disks["status"] == status, disks
    assert result.exit_code == (1 if status == "fail" else 0)
    assert "% used" in disks["reason"] and str(data_dir) in disks["reason"]
    if status == "fail":
        assert "(fail at 1%)" in disks["reason"]


def test_junit_file_has_one_test_case_per_check(site_copy: Callable[..., Path], tmp_path: Path, closed_port: int, html_server: str) -> None:
    from junitparser import Failure, JUnitXml

    site = site_copy(lambda d: d["dicom_endpoint"].__setitem__("kind", "storescp"))
    report = tmp_path / "out" / "health.xml"
    result = cli("health", "--site", str(site), "--check", "disks", "--check", "dicom", "--check", "s3",
                 "--endpoint", f"dicom=127.0.0.1:{closed_port}", "--endpoint", f"s3={html_server}",
                 "--junit", str(report))
    assert result.exit_code == 1
    assert "health: fail" in result.output  # the table for people is printed as well

    root = ET.parse(report).getroot()
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    cases = suites[0].findall("testcase")
    assert [c.get("name") for c in cases] == ["disks", "dicom", "s3"]
    assert all(c.get("classname") == "bidsflux.health.checks" and float(c.get("time", "x")) >= 0 for c in cases)
    assert suites[0].get("tests") == "3" and suites[0].get("failures") == "2"
    by_name = {c.get("name"): c for c in cases}
    assert by_name["disks"].find("failure") is None
    failure = by_name["s3"].find("failure")
    assert failure is not None and "console URL" in (failure.get("message") or "")
    assert by_name["dicom"].find("failure") is not None

    xml = JUnitXml.fromfile(str(report))
    parsed = [(case.name, [type(r).__name__ for r in case.result]) for suite in xml for case in suite]
    assert parsed == [("disks", []), ("dicom", [Failure.__name__]), ("s3", [Failure.__name__])]


def test_json_output_structure(site_copy: Callable[..., Path]) -> None:
    result = cli("health", "--site", str(site_copy(lambda d: None)), "--check", "disks", "--format", "json")
    data = json.loads(result.stdout)
    assert set(data) == {"status", "checks"} and data["status"] in {"ok", "warn", "fail"}
    (only,) = data["checks"]
    assert set(only) == {"name", "status", "reason", "fix", "elapsed", "timeout", "details"}
    assert only["name"] == "disks" and only["timeout"] == 10


def test_unknown_check_and_bad_endpoint_are_user_errors(site_copy: Callable[..., Path]) -> None:
    site = str(site_copy(lambda d: None))
    result = cli("health", "--site", site, "--check", "nope")
    assert result.exit_code == 1 and "unknown check(s): nope" in result.output and "swarm" in result.output
    result = cli("health", "--site", site, "--endpoint", "s3")
    assert result.exit_code == 1 and "expected NAME=VALUE" in result.output
    result = cli("health", "--site", site, "--endpoint", "ftp=x")
    assert result.exit_code == 1 and "unknown endpoint 'ftp'" in result.output
