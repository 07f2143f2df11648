"""Mercure test images: time to build (cold, first run on a machine) or find (warm) the real
Mercure 0.4.1 images by their content tag (target warm: under 5 s; cold is printed, about 7 min on
2 cores), and `mercure up --check-only` on a copy of the default site (target: under 10 s; `docker-compose config`
alone takes 2-3 s on a loaded 2-core machine).

Needs root, Docker, docker-compose and ../shared/upstream/mercure-0.4.1.tar.gz; says so otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mercure"))
WARM_TARGET_S = 5.0
UP_TARGET_S = 10.0


def main() -> int:
    from mercure_images import TARBALL, build

    if os.geteuid() != 0 or not TARBALL.exists() or shutil.which("docker-compose") is None:
        print("mercure: needs root, docker-compose and Mercure's source tarball; skipped")
        return 0
    first = build()
    print(f"images: {len(first.built)} built in {first.seconds:.1f} s (cold when > 0 built)")
    second = build()
    assert not second.built
    print(f"images warm: {second.seconds:.2f} s; target < {WARM_TARGET_S} s: {'met' if second.seconds < WARM_TARGET_S else 'MISSED'}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        for part in ("stack", "schemas", "ci-templates", ".gitlab-ci.yml"):
            src = ROOT / part
            if src.is_dir():
                shutil.copytree(src, repo / part)
            elif src.exists():
                shutil.copy2(src, repo / part)
        site = repo / "stack" / "site.yml"
        text = site.read_text().replace("/srv/bidsflux/mercure", f"{tmp}/mercure").replace(
            "/var/lib/bidsflux", f"{tmp}/state")
        site.write_text(text)
        exe = shutil.which("bidsflux", path=str(Path(sys.executable).parent)) or "bidsflux"
        start = time.perf_counter()
        proc = subprocess.run([exe, "mercure", "up", "--check-only", "--root", str(repo), "--project-name", "bfbench"],
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr)
            return 1
    print(f"mercure up --check-only: {took:.2f} s; target < {UP_TARGET_S} s: {'met' if took < UP_TARGET_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
