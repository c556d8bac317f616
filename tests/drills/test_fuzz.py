"""The fuzz targets (fuzz/targets.py): the committed corpus replays cleanly, and
each target survives a short coverage-guided run (atheris) under a worker's
interpreter state. The long run is ``./run fuzz`` (docs/errors.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from teller.errors import TellerError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fuzz"))

import run as fuzz_run  # noqa: E402
import targets  # noqa: E402

#: Per target in CI: nine targets, two at a time (five rounds), with ~5 s of start-up each: a
#: little over a minute.
SHORT_SECONDS = 6


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_corpus_replays_and_holds_accepted_inputs(name: str) -> None:
    seeds = sorted((ROOT / "fuzz" / "corpus" / name).iterdir())
    assert len(seeds) >= 3, f"fuzz/corpus/{name} needs seeds"
    accepted = 0
    for seed in seeds:
        try:
            targets.TARGETS[name](seed.read_bytes())
            accepted += 1
        except TellerError:
            pass
    # Seeds that get past the first check are what lets the fuzzer reach deep code.
    assert accepted >= 1, f"no seed of {name} is accepted by its parser"


@pytest.mark.slow
def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    names = list(targets.TARGETS)
    results = fuzz_run.run_all(names, SHORT_SECONDS, tmp_path / "work", tmp_path / "crashes", jobs=2)
    failed = {name: tail for name, (code, _, tail) in results.items() if code != 0}
    assert not failed, "\n".join(f"--- {n} (crashing input in {tmp_path / 'crashes' / n}):\n{t}"
                                  for n, t in failed.items())
    for name, (_, executions, tail) in results.items():
        assert executions > 100, f"{name} barely ran:\n{tail}"
