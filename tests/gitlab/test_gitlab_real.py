"""Opt-in: the same day-zero apply against a real GitLab container (testcontainers).

Only for sites that can pull GitLab's image: set BIDSFLUX_REAL_GITLAB_IMAGE (e.g.
gitlab/gitlab-ce:17.11.1-ce.0). It is opt-in, so it skips elsewhere even in CI, and it does not
use require(): this skip is not a missing integration engine."""

from __future__ import annotations

import os
import time
import uuid

import pytest

IMAGE = os.environ.get("BIDSFLUX_REAL_GITLAB_IMAGE", "")


@pytest.mark.skipif(not IMAGE, reason="opt-in: set BIDSFLUX_REAL_GITLAB_IMAGE to a pullable GitLab image to run "
                                      "against a real GitLab (not an integration skip)")
def test_apply_against_real_gitlab(repo_copy) -> None:  # type: ignore[no-untyped-def]
    import requests
    from testcontainers.core.container import DockerContainer

    from bidsflux.gitlab.dayzero import gitlab_day_zero
    from bidsflux.gitlab.objects import connect, desired, diff, load_config, observe
    from bidsflux.gitlab.root_token import root_token
    from bidsflux.site.repository import open_repository

    site = repo_copy / "stack" / "site.yml"
    site.write_text(site.read_text().replace("/var/lib/bidsflux/secrets.env", str(repo_copy / "secrets.env")))
    gl_file = repo_copy / "stack" / "gitlab.yml"
    gl_file.write_text(gl_file.read_text().replace("      secret: dicom_bot_gitlab_token\n", ""))
    with DockerContainer(IMAGE).with_exposed_ports(80).with_env(
            "GITLAB_OMNIBUS_CONFIG", "external_url 'http://127.0.0.1'; prometheus_monitoring['enable'] = false") as c:
        url = f"http://127.0.0.1:{c.get_exposed_port(80)}"
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/readiness", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(10)
        container = c.get_wrapped_container()
        repo = open_repository(root=repo_copy)
        secrets = {"s3_id": "AKIAEXAMPLEKEY123456", "s3_secret": "s3-secret-value-0123456789"}
        with root_token(container) as tok:
            gitlab_day_zero(repo, url, tok.value, stack="bfreal" + uuid.uuid4().hex[:6], secret_values=secrets,
                            values_file=str(repo_copy / "secrets.env"), push=False)
            gdoc, site_data = load_config(repo)
            want = desired(gdoc, site_data, secrets)
            assert diff(want, observe(connect(url, tok.value), want)).empty
