"""Swarm engine figures on a deployed five-service stack (stand-in images, real swarm):

- `plan` wall time when nothing changed (target < 2 s);
- mutating Docker API calls made by a no-op `deploy` (target 0), counted by wrapping
  docker-py's API client (every non-GET/HEAD request) and the `docker stack deploy` call.

    .venv/bin/python benchmarks/bench_swarm.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "swarm")]


def main() -> int:
    import docker
    import swarm_images
    import swarm_site
    from click.testing import CliRunner
    from rich.console import Console

    import bidsflux.swarm.deploy as deploy_mod
    from bidsflux.cli import main as cli_main

    client = docker.from_env(timeout=60)
    info = client.info().get("Swarm") or {}
    if not info.get("ControlAvailable"):
        print("needs a Docker engine that is a swarm manager (docker swarm init --advertise-addr 127.0.0.1)")
        return 1
    before = swarm_site.node_labels(client)
    with tempfile.TemporaryDirectory(prefix="bench-swarm-") as tmp:
        site = swarm_site.make_site(Path(tmp), client, swarm_images.build_all(client), kind="storescp")
        try:
            t0 = time.monotonic()
            boot = CliRunner().invoke(cli_main, ["bootstrap", "--site", str(site.site_file), "--create-dirs", "--yes", "--skip-gitlab",
                                                 "--timeout", "180"])
            if boot.exit_code != 0:
                print(boot.output)
                return 1
            print(f"bootstrap from nothing (5 services): {time.monotonic() - t0:.1f} s")
            times = []
            for _ in range(5):
                t = time.monotonic()
                result = CliRunner().invoke(cli_main, ["plan", "--site", str(site.site_file)])
                times.append(time.monotonic() - t)
                assert result.exit_code == 0, result.output
            print(f"plan, no change: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
                  f"(target < 2 s; {len(times)} runs, includes validate and render)")

            calls: list[str] = []
            reads: list[str] = []  # proves the wrapper sees the traffic
            original = docker.api.client.APIClient.request

            def counting(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
                if method.upper() not in ("GET", "HEAD"):
                    calls.append(f"{method} {url}")
                else:
                    reads.append(url)
                return original(self, method, url, *args, **kwargs)

            original_deploy = deploy_mod.stack_deploy

            def counting_deploy(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append("docker stack deploy")
                return original_deploy(*args, **kwargs)

            docker.api.client.APIClient.request = counting  # type: ignore[method-assign]
            deploy_mod.stack_deploy = counting_deploy
            try:
                ctx = deploy_mod.load_context(str(site.site_file), None)
                rc = deploy_mod.run_deploy(ctx, Console(file=open("/dev/null", "w")), 60, env={})  # noqa: SIM115
            finally:
                docker.api.client.APIClient.request = original  # type: ignore[method-assign]
                deploy_mod.stack_deploy = original_deploy
            print(f"no-op deploy: exit {rc}, mutating Docker API calls: {len(calls)} (target 0; {len(reads)} reads seen)"
                  + (f": {calls}" if calls else ""))
            return 0 if rc == 0 and not calls and statistics.median(times) < 2 else 1
        finally:
            swarm_site.remove_stack(client, site.stack, site.network)
            swarm_site.restore_node_labels(client, before)


if __name__ == "__main__":
    sys.exit(main())
