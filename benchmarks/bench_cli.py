"""How fast the CLI answers a person: `bidsflux --help`, `--version` and `doctor --format json`
(target: help and version under 1.5 s, doctor under 3 s on 2 cores).

Each run is a new process, imports included, as a user runs it."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5
CASES = [("--help", ["--help"], 1.5), ("--version", ["--version"], 1.5),
         ("doctor", ["doctor", "--root", str(ROOT), "--format", "json"], 3.0)]


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    for name, args, target in CASES:
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "bidsflux", *args], capture_output=True, text=True,
                                  env=env, check=False)
            times.append(time.perf_counter() - start)
            if proc.returncode not in (0, 1):  # doctor exits 1 when this host is not ready: still timed
                print(proc.stdout + proc.stderr)
                return 1
        median = statistics.median(times)
        print(f"{name} ({RUNS} runs): median {median:.3f} s, max {max(times):.3f} s; target < {target} s: "
              f"{'met' if median < target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
