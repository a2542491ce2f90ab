"""Run tests over and over against one broker, on demand (never in CI): a test that fails
sometimes is a bug report, and a loop is how it is found.

    python -m tests.soak --runs 50 tests/integration/test_pipeline_recovery.py
    python -m tests.soak --runs 20 --bootstrap 127.0.0.1:9092 'tests/...::test_x[same-data-dir]'

Every run is one pytest process; its temporary files (worker logs, data dirs) are kept under
`--keep` when it fails, with its output (`run-N.out`; every run's with `--outputs`: the fault
tests print their recovery figures). Stops at the first failure unless `--keep-going`. Prints
the counts of each test node; the exit status is the number of failed runs.
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
from collections import Counter
from pathlib import Path

from tests.harness.kafka import local_broker

REPO = Path(__file__).resolve().parents[1]
_RESULT = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)", re.MULTILINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="+", help="pytest node ids or files")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--bootstrap", default=os.environ.get("METER_KAFKA_BOOTSTRAP"))
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "meter-soak")
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument(
        "--outputs", action="store_true",
        help="keep every run's output (run-N.out), passed or not: the fault tests print figures",
    )  # fmt: skip
    args = parser.parse_args(argv)

    broker = None
    bootstrap = args.bootstrap
    if not bootstrap:
        broker = local_broker("meter-soak-kafka-")
        bootstrap = broker.layout.bootstrap
    args.keep.mkdir(parents=True, exist_ok=True)
    outcomes: Counter[tuple[str, str]] = Counter()
    failed_runs = 0
    started = time.monotonic()
    try:
        for run in range(1, args.runs + 1):
            basetemp = args.keep / f"run-{run}"
            shutil.rmtree(basetemp, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                 f"--basetemp={basetemp}", *args.tests],
                cwd=REPO,
                env={**os.environ, "METER_KAFKA_BOOTSTRAP": bootstrap},
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            results = _RESULT.findall(proc.stdout)
            outcomes.update(results)
            ok = proc.returncode == 0
            print(
                f"run {run}/{args.runs}: {'ok' if ok else 'FAILED'} "
                f"({sum(1 for r, _ in results if r == 'PASSED')} passed, "
                f"{time.monotonic() - started:.0f}s)",
                flush=True,
            )
            if args.outputs or not ok:
                (args.keep / f"run-{run}.out").write_text(proc.stdout + proc.stderr)
            if ok:
                shutil.rmtree(basetemp, ignore_errors=True)
                continue
            failed_runs += 1
            print(f"  output: {args.keep / f'run-{run}.out'}; files: {basetemp}", flush=True)
            if not args.keep_going:
                break
    finally:
        if broker is not None:
            broker.stop()
    for (result, node), n in sorted(outcomes.items(), key=lambda x: (x[0][1], x[0][0])):
        print(f"{n:4d} {result:6s} {node}")
    return failed_runs


if __name__ == "__main__":
    sys.exit(main())
