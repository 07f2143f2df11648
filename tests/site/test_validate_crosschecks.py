"""`bidsflux validate` refuses site mistakes that break a site but pass the schemas (issue 19), and
says where and how to fix them: did-you-mean, quote the mode, the allowed pattern, the wrong line."""

from __future__ import annotations

from pathlib import Path

from support import edit_text, validate_problems

edit, problems = edit_text, validate_problems


def line_of(repo: Path, rel: str, needle: str) -> int:
    return next(i + 1 for i, ln in enumerate((repo / rel).read_text().splitlines()) if needle in ln)


def test_receiver_port_must_be_the_container_port_the_compose_file_publishes(repo_copy: Path) -> None:
    edit(repo_copy, "stack/mercure/rules.yml", "    port: 11112", "    port: 104")
    found = problems(repo_copy)
    assert [(p["file"], p["key"]) for p in found] == [("stack/mercure/rules.yml", "settings.receiver.port")]
    assert "container port 11112" in found[0]["message"] and "set it to 11112" in found[0]["message"]


def test_published_dicom_port_may_differ_from_the_container_port(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "  dicom: 11112", "  dicom: 104")
    assert problems(repo_copy) == []


def test_overlay_overlapping_docker_defaults_or_a_lan_needs_an_acknowledgment(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "subnet: 10.87.0.0/16", "subnet: 10.0.0.0/16")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["swarm.network.subnet"]
    assert "10.0.0.0/24 (the swarm ingress network)" in found[0]["message"]
    edit(repo_copy, "stack/site.yml", "subnet: 10.0.0.0/16", "subnet: 172.17.0.0/16")
    assert "docker0" in problems(repo_copy)[0]["message"]
    edit(repo_copy, "stack/site.yml", "subnet: 172.17.0.0/16", "subnet: 192.168.1.0/24")
    found = problems(repo_copy)
    assert "192.168.1.0/24 (a common LAN range)" in found[0]["message"]
    assert "overlap_acknowledged" in found[0]["message"]
    edit(repo_copy, "stack/site.yml", "subnet: 192.168.1.0/24",
         "subnet: 192.168.1.0/24\n    overlap_acknowledged: [192.168.1.0/24]")
    assert problems(repo_copy) == []


def test_advertise_addr_must_be_an_address_or_an_interface(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "advertise_addr: 127.0.0.1", "advertise_addr: 10.0.0.300")
    found = problems(repo_copy)
    assert [(p["key"], p["line"]) for p in found] == [
        ("swarm.advertise_addr", line_of(repo_copy, "stack/site.yml", "10.0.0.300"))]
    assert "'10.0.0.300' is not a valid IP address" in found[0]["message"]
    for good in ("eth0", "10.0.0.5:2377", "enp3s0"):
        edit(repo_copy, "stack/site.yml", "advertise_addr: 10.0.0.300" if good == "eth0" else "advertise_addr: eth0"
             if good == "10.0.0.5:2377" else "advertise_addr: 10.0.0.5:2377", f"advertise_addr: {good}")
        assert problems(repo_copy) == [], good


def test_unpinned_job_image_in_runners_yml_is_refused(repo_copy: Path) -> None:
    edit(repo_copy, "stack/runners.yml", "image: docker:27.5-cli", "image: docker")
    found = problems(repo_copy)
    assert [(p["file"], p["key"]) for p in found] == [("stack/runners.yml", "runners.deploy.docker.image")]
    assert "not pinned" in found[0]["message"]
    edit(repo_copy, "stack/runners.yml", "image: docker\n", "image: docker:latest\n")
    assert [p["key"] for p in problems(repo_copy)] == ["runners.deploy.docker.image"]


def test_storage_remote_must_use_hosts_s3(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "s3://s3.localhost/", "s3://minio.example.org/")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["indexer.storage_remote"]
    assert "not hosts.s3 (s3.localhost)" in found[0]["message"]


def test_unknown_key_gets_a_did_you_mean(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", "  disk_warn_percent: 80", "  disk_warn_pecent: 80")
    found = [p for p in problems(repo_copy) if p["key"] == "health.disk_warn_pecent"]
    assert "did you mean 'disk_warn_percent'?" in found[0]["message"]


def test_a_mode_written_as_a_number_says_quote_it(repo_copy: Path) -> None:
    edit(repo_copy, "stack/site.yml", 'mode: "0700"', "mode: 0700")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["paths.state_dir.mode"]
    assert "quote" in found[0]["message"] and '"0700"' in found[0]["message"]


def test_a_bad_rule_name_shows_the_allowed_pattern_at_the_name(repo_copy: Path) -> None:
    edit(repo_copy, "stack/mercure/rules.yml", "  mr_completed_study:", "  mr completed:")
    found = problems(repo_copy)
    assert [p["key"] for p in found] == ["rules.mr completed"]
    assert found[0]["line"] == line_of(repo_copy, "stack/mercure/rules.yml", "mr completed:")
    assert "^[0-9A-Za-z_-]+$" in found[0]["message"]


def test_yaml_errors_point_at_the_line_that_is_wrong(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    original = site.read_text()
    cases = {
        "unclosed quote": ("  name: bidsflux\n", '  name: "bidsflux\n', "close the quote"),
        "key without colon": ("  domain: localhost\n", "  domain localhost\n", "without ':'"),
        "unclosed bracket": ("processing: [gitlab-runner]", "processing: [gitlab-runner", "not closed"),
    }
    for name, (old, new, words) in cases.items():
        site.write_text(original.replace(old, new, 1))
        found = problems(repo_copy)
        wrong_line = line_of(repo_copy, "stack/site.yml", new.strip())
        assert [(p["line"], words in p["message"]) for p in found] == [(wrong_line, True)], (name, found)
