"""Every command a rotation note in the stack template names exists in the bidsflux CLI, and the
secrets other parts use outside the stack are generated whichever DICOM endpoint is chosen."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from support import REPO_ROOT, cli


def test_rotation_notes_name_existing_commands() -> None:
    template = yaml.safe_load((REPO_ROOT / "stack/bidsflux.stack.yml").read_text())
    named = []
    for name, spec in template["x-bidsflux-secrets"].items():
        for command in re.findall(r"`(bidsflux [^`]+)`", spec["rotation"]):
            named.append((name, command))
            words = [w for w in command.split()[1:] if not w.startswith("-")]
            # Walk the command groups; the words after the command are its arguments.
            for depth in range(len(words), 0, -1):
                result = cli(*words[:depth], "--help")
                if result.exit_code == 0:
                    break
            else:
                raise AssertionError(f"{name}: `{command}` is not a bidsflux command")
            # The words the CLI does not know must be arguments, not a subcommand it lacks.
            assert all(not w.isidentifier() or w in ("dicom_bot", "s3_id", "s3_secret") for w in words[depth:]), \
                (name, command)
    assert ("s3_id", "bidsflux s3 apply") in named


def test_indexer_secrets_exist_with_mercure(repo_copy: Path) -> None:
    from bidsflux.site.render import render_stack
    from bidsflux.site.yamlsource import load

    site = load(repo_copy / "stack/site.yml", repo_copy)
    assert site.data["dicom_endpoint"]["kind"] == "mercure"
    rendered = render_stack(site.data, load(repo_copy / "stack/bidsflux.stack.yml", repo_copy))
    assert "dicom_endpoint" not in rendered.data["services"]
    assert {"s3_id", "s3_secret", "dicom_bot_gitlab_token"} <= set(rendered.secrets)
