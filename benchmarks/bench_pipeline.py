"""Pipeline figures: the ops image build (the repository's Dockerfile on the local Debian base)
cold (no layer cache) and warm (one changed Python file), and the merge-request pipeline's jobs
(`validate`, `plan`) run as a site runs them: gitlab-ci-local's docker executor, the ops image,
the observe runner's volumes, a bootstrapped test stack and the GitLab emulator.

    .venv/bin/python benchmarks/bench_pipeline.py [--skip-cold]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "swarm"), str(ROOT / "tests" / "ci")]


def image_builds(client: object, skip_cold: bool) -> None:
    import ops_image

    tag = "bidsflux-test/ops:bench"
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        ctx = ops_image.ops_context(Path(tmp))
        try:
            if not skip_cold:
                cold = ops_image.build_in(client, ctx, tag, nocache=True)
                print(f"ops image build, cold (no layer cache, apt + pip from the registries): {cold:.1f} s")
            else:
                ops_image.build_in(client, ctx, tag)
            size = client.images.get(tag).attrs["Size"] / 1e6  # type: ignore[attr-defined]
            base = client.images.get(ops_image.BASE_IMAGE).attrs["Size"] / 1e6  # type: ignore[attr-defined]
            print(f"ops image size: {size:.0f} MB ({size - base:.0f} MB on top of the {base:.0f} MB base)")
            changed = ctx / "scripts" / "bidsflux" / "redact.py"
            changed.write_text(changed.read_text() + "\n# a changed Python file\n")
            warm = ops_image.build_in(client, ctx, tag)
            print(f"ops image build, warm (one changed Python file): {warm:.1f} s")
        finally:
            try:
                client.images.remove(tag)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass


def merge_request_jobs(client: object) -> None:
    import gitlab
    import ops_image
    import swarm_images
    import swarm_site
    from gcl import PipelineRepo, runner_volumes

    from bidsflux.gitlab.runners import readonly_socket
    from bidsflux.site.yamlsource import load
    from gitlab_emulator import GitLabEmulator
    from support import cli

    ops = ops_image.build_ops_image(client)
    helper = ops_image.build_helper_image(client)
    before = swarm_site.node_labels(client)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, GitLabEmulator() as emu:
        site = swarm_site.make_site(Path(tmp), client, swarm_images.build_all(client), kind="storescp")
        try:
            boot = cli("bootstrap", "--site", str(site.site_file), "--create-dirs", "--yes", "--skip-gitlab",
                       "--timeout", "180")
            assert boot.exit_code == 0, boot.output
            repo = PipelineRepo(site.root)
            gl = gitlab.Gitlab(emu.url, private_token=emu.admin_token)
            group = gl.groups.create({"name": "ni-dataops", "path": "ni-dataops"})
            project = gl.projects.create({"name": "bidsflux", "path": "bidsflux", "namespace_id": group.id})
            mr = project.mergerequests.create({"source_branch": "change", "target_branch": "main", "title": "t"})
            variables = {"CI_SERVER_URL": emu.url, "BIDSFLUX_GITLAB_TOKEN": emu.admin_token,
                         "CI_PROJECT_ID": str(project.id), "CI_DEFAULT_BRANCH": "main",
                         "CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": str(mr.iid),
                         "CI_COMMIT_BRANCH": "change"}
            tags = repo.job_tags()
            total = 0.0
            # The plan runner's read-only Docker API: the shipped HAProxy config on a socket of our own.
            sock = Path(tmp) / "docker-ro.sock"
            cfg = Path(tmp) / "haproxy.cfg"
            cfg.write_text((ROOT / "stack" / "docker-readonly.haproxy.cfg").read_text()
                           .replace("unix@/run/bidsflux-docker-ro/docker.sock", f"unix@{sock}"))
            proxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not sock.exists():
                time.sleep(0.05)
            reader = emu.create_user("reader")
            variables.update(BIDSFLUX_GITLAB_TOKEN="", BIDSFLUX_GITLAB_READ_TOKEN=emu.create_token(reader["username"], ["read_api"]),
                             BIDSFLUX_GITLAB_NOTE_TOKEN=emu.admin_token)
            for job in ("validate", "plan"):
                volumes = [v.replace(readonly_socket(load(site.site_file).data), str(sock))
                           for v in runner_volumes(repo.path, tags[job])]
                t = time.monotonic()
                result = repo.run(job, variables, ops, helper, volumes)
                took = time.monotonic() - t
                total += took
                assert re.search(rf"PASS\s+{job}\b", result.stdout), result.stdout[-3000:]
                print(f"merge-request job {job}: {took:.1f} s (docker executor, ops image)")
            print(f"merge-request pipeline jobs (validate + plan, run one after the other): {total:.1f} s")
            proxy.terminate()
            proxy.wait(10)
        finally:
            swarm_site.remove_stack(client, site.stack, site.network)
            swarm_site.restore_node_labels(client, before)


def main() -> int:
    import docker

    client = docker.from_env(timeout=600)
    if not (client.info().get("Swarm") or {}).get("ControlAvailable"):
        print("needs a Docker engine that is a swarm manager (docker swarm init --advertise-addr 127.0.0.1)")
        return 1
    image_builds(client, "--skip-cold" in sys.argv)
    merge_request_jobs(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
