"""Bad input never crashes and never slips through: the crashers found so far (fuzz_corpus/), then a
seeded mutation run bounded in time, through `validate`, `render` and `mercure render`, each
command in a forked child limited to 5 s of CPU and 200 MB. A new failure is added to the corpus
(commit it with the fix).

Seed: BIDSFLUX_FUZZ_SEED, else today's date (printed on failure, so any run can be replayed)."""

from __future__ import annotations

import datetime
import os
import time

import pytest
from fuzzing import COMMANDS, Case, Mutator, Outcome, corpus_cases, prepare, run, save_to_corpus

BUDGET_S = float(os.environ.get("BIDSFLUX_FUZZ_SECONDS", "60"))
MAX_CASES = 300


def _problem(case: Case, outcomes: list[Outcome]) -> str | None:
    for o in outcomes:
        if o.status not in ("ok", "refused"):
            return f"{o.status} in `bidsflux {' '.join(o.command)}` ({o.seconds:.1f} s): {o.detail[-1500:]}"
    validate = next(o for o in outcomes if o.command[0] == "validate")
    if case.must_refuse and validate.status == "ok":
        return "validate accepted input that must be refused"
    return None


def test_corpus_of_past_crashers_is_refused_cleanly() -> None:
    cases = corpus_cases()
    assert cases, "tests/site/fuzz_corpus/ is empty"
    failed = []
    for path, case in cases:
        problem = _problem(case, run(case))
        if problem:
            failed.append(f"{path.name} ({case.what}): {problem}")
    assert not failed, "\n".join(failed)


def test_seeded_mutations_never_crash_hang_blow_up_or_slip_through() -> None:
    seed = int(os.environ.get("BIDSFLUX_FUZZ_SEED", datetime.date.today().strftime("%Y%m%d")))
    mutator = Mutator(seed)
    start = time.monotonic()
    failed, cases, runs = [], 0, 0
    while cases < MAX_CASES and time.monotonic() - start < BUDGET_S:
        case = mutator.case()
        # validate for every case; the commands behind it (which validate first) for every third
        commands = COMMANDS if cases % 3 == 0 else COMMANDS[:1]
        outcomes = run(case, commands)
        cases, runs = cases + 1, runs + len(outcomes)
        problem = _problem(case, outcomes)
        if problem:
            saved = save_to_corpus(case)
            failed.append(f"{case.kind}: {case.what} -> {problem} (saved as {saved.name})")
    assert cases >= 10, f"only {cases} cases in {BUDGET_S:g} s"
    assert not failed, f"seed {seed}, {cases} cases / {runs} runs:\n" + "\n".join(failed[:10])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_harness_sees_a_traceback_a_hang_and_a_blow_up(monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    """The bounds are real: a command that raises, spins or allocates is reported as such."""
    import bidsflux.site.repository as repository

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    def spin(*args: object, **kwargs: object) -> None:
        while True:
            pass

    def allocate(*args: object, **kwargs: object) -> None:
        _ = bytearray(1 << 30)

    case = Mutator(1).storage_remote()
    prepare(case)  # the first call warms caches in this process: before anything is broken
    for fake, status in ((boom, "traceback"), (spin, "hang"), (allocate, "memory")):
        monkeypatch.setattr(repository, "open_repository", fake)
        [outcome] = run(case, [command], time_limit=1.0)
        assert outcome.status == status, outcome
