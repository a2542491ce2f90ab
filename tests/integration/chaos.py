"""Chaos runner: the recovery scenario under many random failures, run on demand (not in CI).

    python -m tests.integration.chaos --rounds 10 [--bootstrap 127.0.0.1:9092] [--seed N]

Each round produces a stream of batches (with gateway retries: repeated ids) to a fresh
deployment while workers are SIGKILLed at random moments and restarted (with their data dir or a
new one), stopped cleanly, or added (one to three workers at a time). Afterwards every window's
final totals must be exact and every alert published exactly once (`finish_and_check`). A failed
round keeps its work dir (worker logs, data dirs, and what its check saw: failure.txt, sent.json,
outputs.json) and names its topics; the exit status is the number of failed rounds. Without
--bootstrap a local broker is started for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.harness.data import Event
from tests.harness.deployment import Deployment, write_policy
from tests.harness.kafka import local_broker
from tests.harness.processes import WorkerProcess, wait_until
from tests.harness.recovery import (
    POLICY,
    finish_and_check,
    start_stream,
    stream,
)


def _kill(d: Deployment, rng: random.Random, log: Callable[[str], None]) -> None:
    victim = rng.choice(d.running())
    same = rng.random() < 0.5
    victim.kill()
    d.evict(victim)
    d.start_worker(data_dir=victim.data_dir if same else None, label=f"r{len(d.workers)}")
    log(f"SIGKILL pid {victim.pid}, restarted with {'its' if same else 'a new'} data dir")


def _stop(d: Deployment, rng: random.Random, log: Callable[[str], None]) -> None:
    victim = rng.choice(d.running())
    # A clean stop is of a worker that runs: one still importing (seconds on a loaded machine)
    # has no signal handlers yet and dies of the SIGTERM (status -15), as any process would.
    wait_until(lambda: _serves_metrics(d, victim), 120, interval=0.5,
               what=f"worker {victim.pid} to serve /metrics", abort=victim.died)  # fmt: skip
    # A worker still joining the group finishes the join first: that can take until a killed
    # member's session times out (60 s).
    victim.stop(timeout=180)
    log(f"stopped pid {victim.pid} cleanly")


def _serves_metrics(d: Deployment, worker: WorkerProcess) -> bool:
    try:
        d.metric(worker, "meter_events_total")
    except OSError:
        return False
    return True


def _join(d: Deployment, rng: random.Random, log: Callable[[str], None]) -> None:
    worker: WorkerProcess = d.start_worker(label=f"j{len(d.workers)}")
    log(f"started pid {worker.pid}")


def _keep_evidence(
    d: Deployment, sent: list[Event], workdir: Path, exc: AssertionError, log: Callable[[str], None]
) -> None:
    """What a failed check saw, written next to the worker logs: the assertion, what was sent,
    every window and alert record with its partition, offset and headers, and the groups'
    committed offsets. Topics live on the broker and can be gone by the time someone looks."""
    try:
        (workdir / "failure.txt").write_text(f"{exc}\n")
        (workdir / "sent.json").write_text(json.dumps(sent))
        topics = {
            "windows": d.windows(expect=None, timeout=30),
            "alerts": d.alerts(expect=None, timeout=30),
        }
        kept = {
            name: [
                {
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "headers": {k: v.decode(errors="replace") for k, v in r.headers or ()},
                    "value": r.value.decode(errors="replace") if r.value is not None else None,
                }
                for r in records
            ]
            for name, records in topics.items()
        }
        offsets = {"routed": d.routed_offsets(), "input": d.input_offsets()}
        (workdir / "outputs.json").write_text(json.dumps({**kept, "offsets": offsets}, indent=1))
        log(f"kept what the check saw in {workdir} (failure.txt, sent.json, outputs.json)")
    except Exception as err:  # evidence is best effort; the round's own error stands
        log(f"could not keep what the check saw: {err!r}")


def one_round(bootstrap: str, workdir: Path, seed: int, events: int, max_workers: int) -> None:
    rng = random.Random(seed)
    suffix = uuid.uuid4().hex[:8]
    policy = write_policy(workdir / "policy.yaml", POLICY)
    d = Deployment(bootstrap, workdir, lambda base: f"{base}-{suffix}", policy, partitions=4)
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"  {time.monotonic() - started:6.1f}s {text}", flush=True)

    print(f"round: seed {seed}, group {d.group}, work dir {workdir}", flush=True)
    exact = False
    try:
        batches = stream(rng, n=events, retries=0.05)
        sent = [ev for b in batches for ev in b]
        for _ in range(rng.randint(1, max_workers)):
            d.start_worker(label=f"w{len(d.workers)}")
        producer = start_stream(d, batches, rng, pause=0.03)
        while producer.is_alive():
            time.sleep(rng.uniform(1.0, 5.0))
            running = len(d.running())
            actions = [_kill, _kill, _kill]
            if running > 1:
                actions.append(_stop)
            if running < max_workers:
                actions.append(_join)
            rng.choice(actions)(d, rng, log)
        producer.finish()
        log(f"stream done: {len(batches)} records, {len(sent)} events; checking")
        try:
            finish_and_check(d, sent)
        except AssertionError as exc:
            # What each running worker was doing: mode logs every thread's and task's stack
            # on SIGUSR1.
            for w in d.running():
                os.kill(w.pid, signal.SIGUSR1)
            time.sleep(3)
            _keep_evidence(d, sent, workdir, exc, log)
            raise
        log("exact: every window total and alert as expected")
        exact = True
    finally:
        try:
            d.stop_all()
        except AssertionError as exc:
            # A worker that does not stop must not hide why the round failed: its error is
            # raised `from None`, and a round's own assertion was once lost behind it.
            log(f"stopping the workers failed: {str(exc).splitlines()[0]}")
            if exact:
                raise
        finally:
            d.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--max-workers", type=int, default=3)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "meter-chaos")
    args = parser.parse_args(argv)
    seeds = random.Random(args.seed).sample(range(1 << 30), args.rounds)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = local_broker("meter-chaos-kafka-")
        bootstrap = broker.layout.bootstrap
    failed = 0
    try:
        for i, seed in enumerate(seeds):
            workdir = args.keep / f"round-{i}-{seed}"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            try:
                one_round(bootstrap, workdir, seed, args.events, args.max_workers)
            except Exception:
                failed += 1
                traceback.print_exc()
                print(f"FAILED round {i} (seed {seed}); logs and data in {workdir}", flush=True)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if broker is not None:
            broker.stop()
    print(f"{args.rounds - failed} of {args.rounds} rounds exact", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
