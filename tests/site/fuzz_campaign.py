"""A mutation campaign against `validate`, `render` and `mercure render`; prints figures.

    python tests/site/fuzz_campaign.py [--configurations 1000] [--seed N] [--jobs 2] [--save]

Each configuration is one mutated repository (alias bombs, deep nesting, huge documents, bad
S3 URLs, rule expressions, Jinja runtime errors, YAML-typed values and keys, trailing newlines,
credentials, dangerous paths, random values, deletions, text damage), run through the three
commands in forked children bounded to 5 s and 200 MB. Counts: tracebacks, hangs, memory
blow-ups, refusals without file:line, and accepted-bad (validate exit 0 on input that must be
refused). --save adds each failing case to tests/site/fuzz_corpus/. Exit 1 when any count is
not zero."""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzing import Case, Figures, Mutator, Outcome, cleanup, run, save_to_corpus  # noqa: E402


def _work(args: tuple[int, int]) -> list[tuple[Case, list[Outcome]]]:
    seed, count = args
    import bidsflux.cli  # noqa: F401  (imported once per worker, before the forks)

    mutator = Mutator(seed)
    out = []
    try:
        for _ in range(count):
            case = mutator.case()
            out.append((case, run(case)))
    finally:
        cleanup()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configurations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--save", action="store_true", help="add failing cases to tests/site/fuzz_corpus/")
    parser.add_argument("--show", type=int, default=15, help="failures to describe")
    opts = parser.parse_args()
    start = time.monotonic()
    chunk = 25
    work = [(opts.seed * 1000 + i, min(chunk, opts.configurations - i * chunk))
            for i in range((opts.configurations + chunk - 1) // chunk)]
    figures = Figures()
    by_kind: dict[str, list[int]] = {}
    with ProcessPoolExecutor(max_workers=opts.jobs) as pool:
        for done, results in enumerate(pool.map(_work, work), 1):
            for case, outcomes in results:
                before = len(figures.failures)
                figures.add(case, outcomes)
                stats = by_kind.setdefault(case.kind, [0, 0])
                stats[0] += 1
                stats[1] += len(figures.failures) > before
                if opts.save and len(figures.failures) > before:
                    save_to_corpus(case)
            print(f"  {min(done * chunk, opts.configurations)}/{opts.configurations} configurations "
                  f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
    print(f"seed {opts.seed}: {figures.line()}; {time.monotonic() - start:.0f} s")
    print("by kind (configurations / failing): " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(by_kind.items())))
    seen: set[tuple[str, str]] = set()
    for case, outcome in figures.failures:
        label = outcome.status if outcome is not None else "?"
        if outcome is not None and outcome.status == "ok":
            label = "accepted-bad"
        key = (case.kind, case.what[:50] + label)
        if key in seen or len(seen) >= opts.show:
            continue
        seen.add(key)
        cmd = " ".join(outcome.command) if outcome else ""
        detail = (outcome.detail.strip().splitlines() or [""])[-1][:160] if outcome else ""
        print(f"- {label}: {case.what[:120]} [{cmd}] {detail}")
    bad = figures.accepted_bad + sum(v for k, v in figures.counts.items() if k not in ("ok", "refused"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
