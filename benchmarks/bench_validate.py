"""Wall time of `bidsflux validate` on the default site (target: under 1.5 s on 2 cores).

Measures the real command (a new process each run, imports included), as a user runs it."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7
TARGET_S = 1.5


def main() -> int:
    exe = shutil.which("bidsflux", path=str(Path(sys.executable).parent)) or "bidsflux"
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run([exe, "validate", "--root", str(ROOT)], capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr)
            return 1
    median = statistics.median(times)
    print(f"validate (default site, {RUNS} runs): median {median:.3f} s, min {min(times):.3f} s, max {max(times):.3f} s; target < {TARGET_S} s: {'met' if median < TARGET_S else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
