"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser of untrusted input.

    ./run fuzz                        every target, 60 s each (new inputs kept in fuzz/work/)
    ./run fuzz --seconds 600          longer
    ./run fuzz --target receipts      one target (repeat --target for several)
    ./run fuzz --short                8 s each, nothing kept (./run test runs 6 s each)
    ./run fuzz --jobs 1               one target at a time (default: two)
    ./run fuzz --merge                fold the inputs in fuzz/work/ that add coverage into fuzz/corpus/

Each target runs in its own process, with every Teller module instrumented and
the worker's own imports loaded (py_ecc raises the recursion limit to 100,000
at import: the targets see the interpreter state a worker has). A target fails
on any exception that is not a TellerError, and on an input that takes more
than 5 s (a linear parser reads 16 KiB in milliseconds). Crashing inputs are written to fuzz/crashes/<target>/ (or the
--artifacts directory) and reproduce with
``python fuzz/run.py --one <target> -- <crash file>``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
STAT = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


def _one(target: str, libfuzzer_args: list[str]) -> None:
    import atheris

    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["teller", "targets"]):
        import targets
    import teller.rpc.server  # noqa: F401 - the rest of a worker's imports, and so its interpreter state
    from teller.errors import TellerError

    fn = targets.TARGETS[target]

    def test_one_input(data: bytes) -> None:
        try:
            fn(data)
        except TellerError:
            pass  # a refusal naming the field: what hostile input should get

    # libFuzzer runs argv[0] again for -merge: a wrapper that names the target (see merge()).
    atheris.Setup([os.environ.get("TELLER_FUZZ_SELF", sys.argv[0]), *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def run_target(target: str, seconds: int, work: Path, artifacts: Path, max_len: int = 16384) -> tuple[int, int, str]:
    """(exit code, executions, output tail) of one target's run."""
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", target, "--",
           f"-max_total_time={seconds}", "-timeout=5", f"-max_len={max_len}", "-print_final_stats=1",
           f"-artifact_prefix={artifacts}/", str(work), str(CORPUS / target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=seconds + 120)
    out = proc.stdout + proc.stderr
    m = STAT.search(out)
    return proc.returncode, int(m.group(1)) if m else 0, out[-4000:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--target", action="append", help="a target (default: all)")
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("--short", action="store_true", help="the CI run: 8 s per target, nothing kept")
    ap.add_argument("--jobs", type=int, default=2, help="targets run at once")
    ap.add_argument("--artifacts", type=Path, default=HERE / "crashes")
    ap.add_argument("--merge", action="store_true", help="merge fuzz/work/<target> into the committed corpus")
    ap.add_argument("rest", nargs="*", help="libFuzzer arguments after --one TARGET --")
    args = ap.parse_args(argv)
    if args.one:
        _one(args.one, args.rest)
        return 0

    sys.path.insert(0, str(HERE))
    import targets

    names = args.target or list(targets.TARGETS)
    unknown = set(names) - set(targets.TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {sorted(unknown)}; known: {', '.join(targets.TARGETS)}")
    if args.merge:
        return merge(names)
    seconds = 8 if args.short else args.seconds
    scratch = Path(tempfile.mkdtemp(prefix="teller-fuzz-")) if args.short else HERE / "work"
    try:
        results = run_all(names, seconds, scratch, args.artifacts, jobs=args.jobs)
    finally:
        if args.short:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [name for name, (code, _, _) in results.items() if code != 0]
    for name in failed:
        print(f"--- {name} ---\n{results[name][2]}", file=sys.stderr)
    total = sum(execs for _, execs, _ in results.values())
    print(f"{total} executions in all; {'failed: ' + ', '.join(failed) if failed else 'no findings'}")
    return 1 if failed else 0


def merge(names: list[str]) -> int:
    """libFuzzer's -merge=1: the inputs of fuzz/work/<target> that reach new
    coverage are added to fuzz/corpus/<target> (the only directory written)."""
    scratch = Path(tempfile.mkdtemp(prefix="teller-fuzz-merge-"))
    for name in names:
        work = HERE / "work" / name
        if not work.is_dir():
            continue
        before = len(list((CORPUS / name).iterdir()))
        wrapper = scratch / f"fuzz-{name}"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" --one {name} -- "$@"\n')
        wrapper.chmod(0o755)
        proc = subprocess.run([str(wrapper), "-merge=1", str(CORPUS / name), str(work)],
                              env={**os.environ, "TELLER_FUZZ_SELF": str(wrapper)},
                              capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"{name:20s} {before} -> {len(list((CORPUS / name).iterdir()))} seeds")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def run_all(names: list[str], seconds: int, scratch: Path, artifacts: Path,
            jobs: int = 2) -> dict[str, tuple[int, int, str]]:
    """Each target in its own process, ``jobs`` at a time; prints a line per target."""
    def one(name: str) -> tuple[int, int, str]:
        started = time.monotonic()
        code, execs, tail = run_target(name, seconds, scratch / name, artifacts / name)
        seeds = len(list((CORPUS / name).iterdir()))
        print(f"{name:20s} {'ok' if code == 0 else 'FAILED':6s} {execs:8d} executions "
              f"{time.monotonic() - started:5.1f}s  ({seeds} seeds)", flush=True)
        return code, execs, tail

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


if __name__ == "__main__":
    sys.exit(main())
