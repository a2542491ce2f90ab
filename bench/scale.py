"""Scale-out: the same input drained by 1, 2 and 4 meter workers of one group (on demand).

    .venv/bin/python -m bench.scale [--events 400000] [--partitions 12] [--workers 1,2,4]

One topic of single-event records (bench.events, the example policy, as peer (a) of
`bench.run`) with `--partitions` partitions is filled once; for each worker count a new group
with its own topics starts that many `meter worker` processes at once, and the run is timed from
the first event any of them counted to the last (their `meter_events_total` summed, scraped every
100 ms): so the group's first rebalances, while the workers join, are inside the time. CPU is
every worker's utime + stime over the same span. Uses METER_KAFKA_BOOTSTRAP when set, else starts
a local broker. The broker and the harness share the machine with the workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.drain import (
    PROGRESS,
    MeterTopics,
    Process,
    drain_timeout,
    parse_metrics,
    scrape_text,
    start_meter,
)
from bench.events import generate
from bench.infra import REPO, connect, create_topics, fill_single
from bench.measure import CLK_TCK, cpu_ticks
from bench.run import POLICY

log = logging.getLogger(__name__)


@dataclass
class ScaleResult:
    workers: int
    events: int
    seconds: float
    cpu_seconds: float
    error: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds * 1e6 / self.events if self.events else 0.0


def _counted(ports: Sequence[int]) -> int:
    return sum(int(parse_metrics(scrape_text(p, PROGRESS)).get("meter_events_total", 0))
               for p in ports)  # fmt: skip


def drain(bootstrap: str, topic: str, events: int, partitions: int, workers: int,
          workdir: Path) -> ScaleResult:  # fmt: skip
    topics = MeterTopics.named(f"{workdir.name}-g", topic)
    started = [
        start_meter(bootstrap, topics, POLICY, partitions, workdir / f"w{i}")
        for i in range(workers)
    ]
    procs: list[Process] = [p for p, _ in started]
    ports = [port for _, port in started]
    deadline = time.monotonic() + drain_timeout(events)
    t_first = 0.0
    cpu_first = 0
    try:
        while True:
            count = _counted(ports)
            now = time.time()
            if count and not t_first:
                t_first, cpu_first = now, sum(cpu_ticks(p.pid) for p in procs)
            if count >= events:
                cpu = (sum(cpu_ticks(p.pid) for p in procs) - cpu_first) / CLK_TCK
                return ScaleResult(workers, count, now - t_first, cpu)
            dead = [p for p in procs if not p.alive()]
            if dead or time.monotonic() > deadline:
                error = "a worker exited" if dead else "timed out"
                log.error("%d workers: %s at %d events\n%s", workers, error, count,
                          (dead or procs)[0].tail())  # fmt: skip
                return ScaleResult(workers, count, 0.0, 0.0, error)
            time.sleep(0.1)
    finally:
        for p in procs:
            p.stop()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--workers", default="1,2,4", help="worker counts, e.g. 1,2,4")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("kafka", "aiokafka", "meter.adapters.topics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    workdir = (REPO / "var" / "bench" / f"scale-{run_id}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    kafka = connect(workdir / "kafka")
    results: list[ScaleResult] = []
    try:
        topic = f"bench-scale-{run_id}"
        create_topics(kafka.bootstrap, [topic], args.partitions)
        filled = fill_single(kafka.bootstrap, topic, generate(args.events, args.seed))
        log.info("filled %d events in %.1f s", filled.events, filled.seconds)
        for n in (int(w) for w in args.workers.split(",")):
            result = drain(kafka.bootstrap, topic, args.events, args.partitions, n,
                           workdir / f"{run_id}-{n}")  # fmt: skip
            log.info("%d worker(s): %s", n, json.dumps(result.__dict__))
            results.append(result)
    finally:
        kafka.close()
    print(f"{'workers':>7} | {'events/s':>9} | {'CPU s per million events':>24}")
    for r in results:
        shown = r.error or f"{r.events_per_s:>9,.0f} | {r.cpu_per_million:>24,.1f}"
        print(f"{r.workers:>7} | {shown}")
    if args.json:
        payload = [{**r.__dict__, "events_per_s": r.events_per_s,
                    "cpu_per_million": r.cpu_per_million} for r in results]  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1))
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
