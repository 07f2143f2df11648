"""Requests of a no-op `gitlab apply` for the default stack/gitlab.yml, against the GitLab emulator.

Target: 0 writes; reads grow with the objects of gitlab.yml, not with the size of GitLab (the run
is repeated after adding 500 unrelated projects and 200 users to GitLab).

    .venv/bin/python benchmarks/bench_gitlab.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bidsflux.gitlab import objects as go  # noqa: E402
from bidsflux.site.repository import open_repository  # noqa: E402
from gitlab_emulator import GitLabEmulator  # noqa: E402


def noop_apply(emu: GitLabEmulator, want: go.Desired, store: go.TokenStore) -> tuple[int, int, float]:
    gl = go.connect(emu.url, emu.admin_token)
    mark, t0 = emu.mark(), time.perf_counter()
    plan = go.diff(want, go.observe(gl, want))
    go.apply(gl, want, plan, store, emu.url)
    return len(emu.reads(mark)), len(emu.writes(mark)), time.perf_counter() - t0


def main() -> None:
    gdoc, site = go.load_config(open_repository(root=ROOT))
    want = go.desired(gdoc, site, {"s3_id": "AKIAEXAMPLEKEY123456", "s3_secret": "s3-secret-value-0123456789"})
    for u in want.users:
        if u.token:
            u.token.secret = None  # no swarm needed: values go to a temp values file and CI variables
    with GitLabEmulator() as emu, tempfile.TemporaryDirectory() as tmp:
        gl = go.connect(emu.url, emu.admin_token)
        store = go.TokenStore(gl, "bench", str(Path(tmp) / "secrets.env"))
        go.apply(gl, want, go.diff(want, go.observe(gl, want)), store, emu.url)
        objects = len(want.users) + len(want.groups) + len(want.projects) + len(want.variables) + len(want.schedules)
        reads, writes, secs = noop_apply(emu, want, store)
        print(f"gitlab.yml objects: {objects}")
        print(f"no-op apply: {reads} reads, {writes} writes, {secs * 1000:.0f} ms")
        g = gl.groups.create({"name": "noise", "path": "noise"})
        for i in range(500):
            gl.projects.create({"name": f"p{i}", "namespace_id": g.id})
        for i in range(200):
            emu.create_user(f"user{i}")
        reads2, writes2, secs2 = noop_apply(emu, want, store)
        print(f"no-op apply with 500 more projects and 200 more users in GitLab: {reads2} reads, {writes2} writes, "
              f"{secs2 * 1000:.0f} ms")


if __name__ == "__main__":
    main()
