"""`bidsflux canary` refuses what it cannot do with a message, before sending anything."""

from __future__ import annotations

from pathlib import Path

from support import cli

ENV = {"BIDSFLUX_SECRET_DICOM_BOT_GITLAB_TOKEN": "glpat-canary-test", "BIDSFLUX_SECRET_S3_ID": "AKCANARY",
       "BIDSFLUX_SECRET_S3_SECRET": "canary-secret-value", "BIDSFLUX_ENDPOINT_DICOM": "127.0.0.1:9"}


def test_template_the_canary_cannot_fill_is_a_clear_error(repo_copy: Path) -> None:
    site = repo_copy / "stack/site.yml"
    site.write_text(site.read_text().replace('gitlab_group_template: "{ReferringPhysicianName}/{StudyDescriptionPath[1]}"',
                                             'gitlab_group_template: "{ReferringPhysicianName}/{StudyDescriptionPath[5]}"'))
    result = cli("canary", "--root", str(repo_copy), env=ENV)
    assert result.exit_code == 1 and "cannot be filled from the canary's study" in result.output, result.output
    assert "canary-secret-value" not in result.output


def test_missing_keys_name_how_to_provide_them(repo_copy: Path) -> None:
    result = cli("canary", "--root", str(repo_copy), "--secrets-file", str(repo_copy / "none.env"),
                 env={**ENV, "BIDSFLUX_SECRET_S3_SECRET": ""})
    assert result.exit_code == 1 and "s3_secret" in result.output and "BIDSFLUX_SECRET_S3_SECRET" in result.output


def test_unreachable_endpoint_fails_at_send(repo_copy: Path, gitlab_emulator) -> None:  # type: ignore[no-untyped-def]
    result = cli("canary", "--root", str(repo_copy), "--timeout", "1",
                 env={**ENV, "BIDSFLUX_ENDPOINT_GITLAB": gitlab_emulator.url, "BIDSFLUX_ENDPOINT_S3": "http://127.0.0.1:9"})
    assert result.exit_code == 1
    assert "canary: FAILED at send: no association" in result.output and "fix: is the DICOM endpoint running" in result.output
