"""Endurance run: a steady stream for a long time, with a worker SIGKILLed every few minutes; run
on demand (not in CI).

    python -m tests.integration.endurance --minutes 30 --rate 2000 --kill-every 240 \\
        [--bootstrap 127.0.0.1:9092] [--seed N] [--out FILE.json]

Two workers count a stream of `--rate` events per second (records of 50 events, 5% of them
carrying gateway retries) for `--minutes`. Every `--kill-every` seconds one worker, at random, is
SIGKILLed and restarted, with its data dir or a new one. Every 30 s the runner samples each
worker's RSS and data dir size, and the records not yet routed and not yet counted (printed, and
written to `--out`). At the end every window total must be exact and every alert published
exactly once (`finish_and_check`). Without --bootstrap a local broker is started.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from bench.measure import rss_mib, size_mib
from tests.harness.deployment import Deployment, write_policy
from tests.harness.faults import SteadyProducer
from tests.harness.kafka import local_broker
from tests.harness.processes import WorkerProcess
from tests.harness.recovery import POLICY, finish_and_check, stream

PER_RECORD = 50
SAMPLE_S = 30.0


def _lags(d: Deployment) -> tuple[int | None, int | None]:
    """Records not yet routed (input) and not yet counted (routed), over all partitions."""
    try:
        routed = sum(end - done for done, end in d.routed_offsets().values())
        return d.input_lag(), routed
    except (KafkaError, OSError):  # the groups may be rebalancing: no figure this time
        return None, None


def sample(d: Deployment, elapsed: float, producer: SteadyProducer) -> dict[str, Any]:
    input_lag, routed_lag = _lags(d)
    return {
        "t_s": round(elapsed),
        "records_sent": producer.sent,
        "input_lag_records": input_lag,
        "routed_lag_records": routed_lag,
        "workers": [_worker(w) for w in d.running()],
    }


def _worker(w: WorkerProcess) -> dict[str, Any]:
    return {"pid": w.pid, "rss_mib": round(rss_mib(w.pid), 1),
            "data_mib": round(size_mib(w.data_dir), 1)}  # fmt: skip


def _kill(d: Deployment, rng: random.Random) -> str:
    victim: WorkerProcess = rng.choice(d.running())
    same = rng.random() < 0.5
    victim.kill()
    d.evict(victim)
    d.start_worker(data_dir=victim.data_dir if same else None, label=f"r{len(d.workers)}")
    return f"SIGKILL pid {victim.pid}, restarted with {'its' if same else 'a new'} data dir"


def run(args: argparse.Namespace, bootstrap: str, workdir: Path) -> dict[str, Any]:
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    suffix = uuid.uuid4().hex[:8]
    policy = write_policy(workdir / "policy.yaml", POLICY)
    d = Deployment(bootstrap, workdir, lambda base: f"{base}-{suffix}", policy, partitions=4)
    n = int(args.rate * args.minutes * 60)
    print(f"seed {seed}, group {d.group}, {n:,} events at {args.rate:g}/s, work dir {workdir}")
    batches = stream(rng, n=n, per_record=PER_RECORD, retries=0.05)
    sent = [ev for b in batches for ev in b]
    out: dict[str, Any] = {"seed": seed, "rate": args.rate, "minutes": args.minutes,
                           "events": len(sent), "records": len(batches), "samples": [],
                           "kills": []}  # fmt: skip
    try:
        for label in ("a", "b"):
            d.start_worker(label=label)
        producer = SteadyProducer(d.bootstrap, d.input_topic, batches, pause=PER_RECORD / args.rate)
        started = time.monotonic()
        producer.start()
        next_kill = started + args.kill_every
        next_sample = started
        while producer.is_alive():
            now = time.monotonic()
            if now >= next_sample:
                out["samples"].append(s := sample(d, now - started, producer))
                print(json.dumps(s), flush=True)
                next_sample += SAMPLE_S
            if now >= next_kill:
                what = _kill(d, rng)
                out["kills"].append({"t_s": round(now - started), "what": what})
                print(f"{now - started:7.0f}s {what}", flush=True)
                next_kill += args.kill_every
            time.sleep(0.5)
        producer.finish()
        out["produce_s"] = round(time.monotonic() - started)
        # A backlog left at the end is drained (and sampled) before the check, whose own waits
        # are made for test-sized streams.
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            out["samples"].append(s := sample(d, time.monotonic() - started, producer))
            print(json.dumps(s), flush=True)
            routed = s["routed_lag_records"]
            # Progress reports keep coming every tick: a few routed records are always in flight.
            if s["input_lag_records"] == 0 and routed is not None and routed <= 4 * d.partitions:
                break
            time.sleep(SAMPLE_S)
        finish_and_check(d, sent)
        out["drained_s"] = round(time.monotonic() - started)
        out["exact"] = True
        print("exact: every window total and alert as expected", flush=True)
    except AssertionError as exc:
        out["exact"] = False
        out["failure"] = str(exc)[:4000]
        print(f"FAILED: {exc}", flush=True)
    finally:
        d.stop_all()
        d.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--kill-every", type=float, default=240.0, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--keep", type=Path, default=Path(tempfile.gettempdir()) / "meter-endure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = local_broker("meter-endure-kafka-")
        bootstrap = broker.layout.bootstrap
    shutil.rmtree(args.keep, ignore_errors=True)
    args.keep.mkdir(parents=True)
    try:
        result = run(args, bootstrap, args.keep)
    finally:
        if broker is not None:
            broker.stop()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if result["exact"]:
        shutil.rmtree(args.keep, ignore_errors=True)
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
