"""The README is written for site administrators (issue 19): it starts with the two commands,
says what is known not to work, what a server needs, what to edit first, and how to get out of
trouble; internals live in docs/DEVELOPERS.md."""

from __future__ import annotations

import re

import yaml

from bidsflux.swarm.preflight import MIN_ENGINE
from support import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _headings() -> list[str]:
    return re.findall(r"(?m)^## (.+)$", README)


def test_readme_starts_with_the_two_commands_and_says_who_each_is_for() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1).strip().splitlines()
    commands = [ln.split()[0] for ln in first_block]
    assert commands[0] == "./scripts/bootstrap.sh" and commands[-1] == "./scripts/test.sh"
    assert set(commands) == {"./scripts/bootstrap.sh", "./scripts/test.sh"}
    assert "contributors" in first_block[-1] and "installs" in first_block[-1]


def test_status_and_limits_come_first_then_requirements_then_day_zero() -> None:
    h = _headings()
    assert h.index("Status and known limits") < h.index("Requirements") < h.index("Day zero")
    assert h.index("Status and known limits") == 0
    assert "Troubleshooting" in h


def test_requirements_match_what_the_code_checks() -> None:
    section = README.split("## Requirements", 1)[1].split("\n## ", 1)[0]
    assert f"Engine {MIN_ENGINE[0]}.{MIN_ENGINE[1]} or later" in section
    site = yaml.safe_load((REPO_ROOT / "stack/site.yml").read_text())
    for name, port in site["ports"].items():
        assert re.search(rf"\b{port}\b", section), f"ports.{name} ({port}) missing from Requirements"
    assert str(site["swarm"]["data_path_port"]) in section
    for word in ("DNS", "root", "Debian", "hosts:"):
        assert word in section, word


def test_day_zero_says_edit_site_yml_first_with_the_keys_sites_change() -> None:
    section = README.split("## Day zero", 1)[1].split("\n## ", 1)[0]
    assert section.index("stack/site.yml") < section.index("bootstrap.sh")
    site = yaml.safe_load((REPO_ROOT / "stack/site.yml").read_text())
    for key in re.findall(r"\| `([a-z_]+)\.", section):
        assert key in site, f"the Day zero table names {key}, which site.yml does not have"
    for key in ("hosts", "swarm", "paths", "dicom_endpoint"):
        assert f"`{key}." in section


def test_internals_live_in_the_developer_document() -> None:
    assert not re.findall(r"\b(?:POST|GET|PUT|DELETE) /", README), "API paths belong in docs/DEVELOPERS.md"
    assert not re.findall(r"`bidsflux\.[a-z_.]+\(", README), "Python call signatures belong in docs/DEVELOPERS.md"
    dev = (REPO_ROOT / "docs/DEVELOPERS.md").read_text()
    assert "## Architecture" in dev and "./scripts/test.sh" in dev and "gitlab_emulator" in dev
    assert "docs/DEVELOPERS.md" in README
