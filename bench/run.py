"""`python -m bench.run`: fill a topic once, drain it with each peer in turn, write the report.

    python -m bench.run --events 1000000 --partitions 4 --only a,b,c,d,e,f --out BENCHMARKS.md

Peers: (a) meter worker, one event per record; (b) meter worker, 100-event batch records;
(c) the ceiling, aiokafka + json + dict; (d) naive faust windowed tables; (e) Quix Streams;
(f) Kafka Streams; (g) meter worker, 10,000 organisations with Zipf traffic; (h) meter worker,
every call from a new unknown app. Uses METER_KAFKA_BOOTSTRAP when set, else starts a local
broker on free ports with its data under the run's directory (var/bench/<run>/kafka, deleted at
the end).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.drain import MeterTopics, PeerResult, run_meter, run_reporting_peer
from bench.infra import REPO, connect, create_topics, fill, fill_single, kafka_version
from bench.latency import run_latency
from bench.report import Machine, Report, ordered, summarise_profile
from bench.sections import other_sections
from bench.subjects import many_orgs, unknown_events, write_policy, zipf_events
from meter.adapters.topics import TopicSpec, ensure_topics

log = logging.getLogger("bench")

POLICY = REPO / "meter" / "examples" / "case-2022.yaml"
KSTREAMS = REPO / "bench" / "kstreams"
ANALYSIS = REPO / "bench" / "analysis.md"
BATCH = 100
QUIX_VERSION = "3.28.1"
KAFKA_STREAMS_VERSION = "4.1.2"

NAMES = {
    "a": "meter worker, 1 event per record",
    "b": f"meter worker, {BATCH}-event batch records",
    "c": "ceiling: aiokafka + json.loads + dict",
    "d": "faust windowed tables (naive)",
    "e": f"Quix Streams {QUIX_VERSION} tumbling window",
    "f": f"Kafka Streams {KAFKA_STREAMS_VERSION} windowed aggregate",
    "g": "meter worker, 10,000 orgs of 1-5 apps, Zipf traffic",
    "h": "meter worker, every call from a new unknown app",
}
PEER_NOTES = {
    "a": "(a), (b): `meter worker` with the example policy (9 apps, 2 orgs, caps on 15m, 1h, 1d "
    "and monthly windows: every event is counted per app and per org in 5 window sizes), "
    "RocksDB store, changelog, alerts and window totals published as they happen.",
    "c": "(c): one aiokafka consumer, `json.loads` of every value, calls and records per app in "
    "a dict; no state, no output. What any Python consumer of this topic pays at least.",
    "d": "(d): faust 0.15.3 windowed tables (RocksDB, changelogs): calls and records per app and "
    "per org in 15-minute tumbling windows of the record timestamp: 4 table updates per event.",
    "e": "(e): Quix Streams `tumbling_window(15 min).agg(calls=Count(), records=Sum())` per app "
    "(the record key), `.current()`; defaults otherwise (RocksDB, changelog, at-least-once).",
    "f": "(f): Kafka Streams `groupByKey().windowedBy(15 min).aggregate(calls, records)` per app, "
    "Jackson to read `records`, 1 stream thread, defaults otherwise (RocksDB, 10 MB cache, "
    "changelog, at-least-once), JVM -Xmx512m. (d), (e) and (f) count per app (d: and per org) "
    "in one window size only; the meter counts far more per event.",
    "g": "(g): the same number of single-event records over 10,000 organisations of 1 to 5 apps "
    "(about 30,000 apps; bench/subjects.py), Zipf-distributed (s = 1.1) over the apps; every app "
    "on a tier with a 15-minute calls cap, every organisation with a daily records cap. "
    "Target: at least 80% of (a)'s events/s.",
    "h": "(h): the same number of single-event records, each from an app id no policy knows and "
    "never seen before (the example policy): each is counted for its app and alerted on once. "
    "Target: at least 50% of (a)'s events/s.",
}


@dataclass
class Run:
    """Everything the peers share: broker, topics, sizes, the run's directory."""

    bootstrap: str
    prefix: str
    workdir: Path
    events: int
    partitions: int
    single: str
    batched: str
    profile_s: float = 0.0
    many: str = ""
    many_policy: Path = POLICY
    unknown: str = ""


def peer_meter(run: Run, key: str) -> PeerResult:
    topic = run.single if key == "a" else run.batched
    topics = MeterTopics.named(f"{run.prefix}-meter-{key}", topic)
    result = PeerResult(key, NAMES[key], run.events)
    return run_meter(result, run.bootstrap, topics, POLICY, run.partitions, run.workdir / key)


def peer_many_orgs(run: Run) -> PeerResult:
    topics = MeterTopics.named(f"{run.prefix}-meter-g", run.many)
    result = PeerResult("g", NAMES["g"], run.events)
    return run_meter(result, run.bootstrap, topics, run.many_policy, run.partitions,
                     run.workdir / "g")  # fmt: skip


def peer_unknown_apps(run: Run) -> PeerResult:
    topics = MeterTopics.named(f"{run.prefix}-meter-h", run.unknown)
    result = PeerResult("h", NAMES["h"], run.events)
    return run_meter(result, run.bootstrap, topics, POLICY, run.partitions, run.workdir / "h")


def fill_subjects(run: Run, args: argparse.Namespace) -> None:
    """The inputs of (g) and (h), when they run."""
    if "g" in args.only:
        run.many = f"{run.prefix}-many"
        apps = many_orgs()
        run.many_policy = write_policy(run.workdir / "many-orgs.yaml", apps)
        create_topics(run.bootstrap, [run.many], args.partitions)
        filled = fill_single(run.bootstrap, run.many, zipf_events(args.events, apps, args.seed))
        log.info("filled (g): %d events over %d apps in %.1f s", filled.events, len(apps),
                 filled.seconds)  # fmt: skip
    if "h" in args.only:
        run.unknown = f"{run.prefix}-unknown"
        create_topics(run.bootstrap, [run.unknown], args.partitions)
        filled = fill_single(run.bootstrap, run.unknown, unknown_events(args.events, args.seed))
        log.info("filled (h): %d events in %.1f s", filled.events, filled.seconds)


def profile_meter(run: Run, peer: str = "a") -> Path:
    """One more drain of peer `peer`'s topic (a, g or h) by a meter worker under py-spy (not
    timed: sampling slows the worker); returns the collapsed-stack profile's path."""
    topic, policy = {"a": (run.single, POLICY), "g": (run.many, run.many_policy),
                     "h": (run.unknown, POLICY)}[peer]  # fmt: skip
    topics = MeterTopics.named(f"{run.prefix}-meter-profile-{peer}", topic)
    result = PeerResult(peer, "profile", run.events)
    workdir = run.workdir / f"profile-{peer}"
    run_meter(result, run.bootstrap, topics, policy, run.partitions, workdir, run.profile_s)
    return workdir / "profile.txt"


def peer_ceiling(run: Run) -> PeerResult:
    cmd = [sys.executable, "-m", "bench.peers.ceiling", run.bootstrap, run.single]
    cmd += [f"{run.prefix}-ceiling", str(run.events)]
    return run_reporting_peer(PeerResult("c", NAMES["c"], run.events), cmd, run.workdir / "c")


def peer_faust(run: Run) -> PeerResult:
    data = run.workdir / "d" / "data"
    # Created up front, as faust would (compact+delete, retention = expires): on a fresh, busy
    # broker faust sometimes checks a changelog's partitions before it sees the topic, and stops.
    changelogs = [f"{run.prefix}-faust-{t}-changelog" for t in ("calls", "records")]
    config = {"cleanup.policy": "compact,delete", "retention.ms": str(3_600_000)}
    ensure_topics(run.bootstrap, [TopicSpec(c, run.partitions, config) for c in changelogs])
    cmd = [sys.executable, "-m", "bench.peers.faust_naive", run.bootstrap, run.single]
    cmd += [f"{run.prefix}-faust", str(run.partitions), str(run.events), str(data)]
    return run_reporting_peer(PeerResult("d", NAMES["d"], run.events), cmd, run.workdir / "d")


def peer_quix(run: Run) -> PeerResult:
    state = run.workdir / "e" / "state"
    cmd = [sys.executable, "-m", "bench.peers.quix_count", run.bootstrap, run.single]
    cmd += [f"{run.prefix}-quix", str(run.events), str(state)]
    return run_reporting_peer(
        PeerResult("e", NAMES["e"], run.events), cmd, run.workdir / "e", exits_itself=True
    )


def build_kstreams() -> float:
    """`mvn -q -B package` in bench/kstreams; returns the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KSTREAMS / "pom.xml"), "package"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise RuntimeError(f"the Kafka Streams peer did not build:\n{tail}")
    return time.monotonic() - started


def peer_kstreams(run: Run) -> PeerResult:
    target = KSTREAMS / "target"
    state = run.workdir / "f" / "state"
    cmd = ["java", "-Xms256m", "-Xmx512m", "-cp", f"{target / 'kstreams-bench.jar'}:{target}/lib/*"]
    cmd += ["dev.meter.bench.WindowedCount", run.bootstrap, run.single, f"{run.prefix}-kstreams"]
    cmd += [str(run.events), str(state)]
    return run_reporting_peer(
        PeerResult("f", NAMES["f"], run.events), cmd, run.workdir / "f", exits_itself=True
    )


PEERS: dict[str, Callable[[Run], PeerResult]] = {
    "a": lambda run: peer_meter(run, "a"),
    "b": lambda run: peer_meter(run, "b"),
    "c": peer_ceiling,
    "d": peer_faust,
    "e": peer_quix,
    "f": peer_kstreams,
    "g": peer_many_orgs,
    "h": peer_unknown_apps,
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=None, help="N (default 1,000,000; smoke 2,000)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--only", default="a,b,c,d,e,f", help="peers to run, e.g. a,b,c")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="report file")
    p.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    p.add_argument("--smoke", action="store_true", help="tiny N and a 5 s latency run")
    p.add_argument("--latency-seconds", type=float, default=None, help="default 25 (smoke 5)")
    p.add_argument("--latency-rate", type=float, default=None, help="default: half of (a)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--profile-peer", default="a", choices=("a", "g", "h"),
                   help="whose input the profiled drain reads (default a)")  # fmt: skip
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="py-spy a separate, untimed meter drain of (a) for this long")  # fmt: skip
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--workdir", type=Path, default=None, help="default var/bench/<run id>")
    p.add_argument("--keep", action="store_true", help="keep broker data and peer state")
    args = p.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {unknown}; choose from {sorted(PEERS)}")
    if args.events is None:
        args.events = 2_000 if args.smoke else 1_000_000
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if args.smoke else 25.0
    return args


def latency_rate(args: argparse.Namespace, peers: list[PeerResult]) -> float:
    if args.latency_rate:
        return float(args.latency_rate)
    a = next((p for p in peers if p.key == "a"), None)
    measured = 0.0
    if a is not None:
        measured = a.events_per_s or float(a.notes.get("events_per_s_until_stall", 0.0))
    rate = measured / 2 if measured else 2_000.0
    return min(rate, 500.0) if args.smoke else rate


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("kafka", "aiokafka", "meter.adapters.topics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    workdir = (args.workdir or REPO / "var" / "bench" / run_id).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    machine = Machine.probe(kafka_version())
    report = Report(
        command="python -m bench.run " + shlex.join(argv),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        events=args.events,
        partitions=args.partitions,
        machine=machine,
        peers=[],
    )
    if "f" in args.only:
        report.build_seconds = build_kstreams()
        log.info("built the Kafka Streams peer in %.1f s", report.build_seconds)
    kafka = connect(workdir / "kafka")
    try:
        prefix = f"bench-{run_id}"
        run = Run(kafka.bootstrap, prefix, workdir, args.events, args.partitions,
                  f"{prefix}-single", f"{prefix}-batch", args.profile)  # fmt: skip
        create_topics(kafka.bootstrap, [run.single, run.batched], args.partitions)
        filled = fill(kafka.bootstrap, run.single, run.batched, args.events, batch=BATCH,
                      partitions=args.partitions, seed=args.seed)  # fmt: skip
        report.fill_seconds, report.batch_records = filled.seconds, filled.batch_records
        fill_subjects(run, args)
        log.info("filled %d events (%d batch records) in %.1f s", args.events,
                 filled.batch_records, filled.seconds)  # fmt: skip
        for key in sorted(args.only):
            log.info("peer (%s) %s: draining %d events", key, NAMES[key], args.events)
            result = PEERS[key](run)
            log.info("peer (%s): %s", key, json.dumps(result.as_json()))
            report.peers.append(result)
        if args.profile:
            log.info("profiling the meter worker (py-spy) over another drain of (a)")
            profile = profile_meter(run, args.profile_peer)
            report.profile = summarise_profile(profile) if profile.exists() else None
        if {"a", "b"} & set(args.only) and not args.no_latency:
            rate = latency_rate(args, report.peers)
            log.info("alert latency at %.0f events/s for %.0f s", rate, args.latency_seconds)
            report.latency = run_latency(
                kafka.bootstrap,
                f"{prefix}-latency",
                args.partitions,
                rate,
                args.latency_seconds,
                workdir / "latency",
            )
    finally:
        kafka.close()
        if not args.keep:
            _clean(workdir)
    machine.load_end = os.getloadavg()
    finish(report, args, workdir)
    return 0 if all(p.ok for p in report.peers) else 1


def finish(report: Report, args: argparse.Namespace, workdir: Path) -> None:
    report.peers = ordered(report.peers)
    report.notes = notes(report, args)
    if ANALYSIS.exists() and not args.smoke:
        report.analysis = ANALYSIS.read_text()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = "" if args.smoke else other_sections(args.out)
    args.out.write_text(report.render() + (f"\n{kept}\n" if kept else ""))
    doc = {
        "events": report.events,
        "partitions": report.partitions,
        "peers": [p.as_json() for p in report.peers],
        "latency": report.latency.as_json() if report.latency else None,
    }
    json_path = args.json or workdir / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s and %s", args.out, json_path)


def notes(report: Report, args: argparse.Namespace) -> list[str]:
    keys = {p.key for p in report.peers}
    out = [
        "**events/s** = N / (t_last - t_first): t_first is when the peer processed its first "
        "event, t_last when it had processed all N, so process start-up, group join and the "
        "first fetch are excluded. Peers (c) to (f) time themselves in-process (wall clock at the "
        "first and N-th event; (c) at the start of its first fetched batch). The meter is timed "
        "from outside: its `/metrics` is scraped every 100 ms, t_first = first scrape with "
        "`meter_events_total` > 0, t_last = first scrape with `meter_events_total` = N.",
        "**CPU s per million events** = (utime + stime) of the peer's process from "
        "/proc/<pid>/stat, sampled at t_first and t_last, all threads included (the meter "
        "worker and faust run one process each; for the JVM this includes JIT and GC threads). "
        "**Peak RSS** = VmHWM of that process at t_last (start-up included).",
        f"Input: N generated events (bench/events.py, seed {args.seed}: 9 apps of the example "
        "policy, ~33 records per call, event time from 2022-01-01 at 25 calls/s), produced once "
        f"to a topic of single-event records keyed by app_id with record timestamp = event "
        f"time (peers a, c, d, e, f) and once as {report.batch_records:,} records of "
        f"{BATCH}-event JSON arrays, round-robin over the partitions (peer b); filling took "
        f"{report.fill_seconds:.1f} s. All peers read from the beginning with their own "
        "consumer group; every peer keeps its state the way it does by default.",
        "The broker, the peer and the harness share the machine: on a 2-core machine the "
        "broker's own CPU (not counted in the peer's CPU) competes with the peer.",
    ]
    if "b" in keys:
        keys.add("a")
    out += [PEER_NOTES[k] for k in ("a", "c", "d", "e", "f") if k in keys]
    if report.build_seconds is not None:
        out.append(
            f"The Kafka Streams peer was built (`mvn -q -B package`) in "
            f"{report.build_seconds:.1f} s before the run."
        )
    for p in report.peers:
        if p.notes:
            extra = ", ".join(f"{k} {v:,.0f}" for k, v in p.notes.items())
            out.append(
                f"({p.key}) worker metrics at t_last (the last outputs may be in flight): {extra}."
            )
    load = report.machine.load_start
    if load[0] > 0.5 * report.machine.cpus:
        out.append(
            f"The machine was not idle: load average {load[0]:.2f} at the start (on "
            f"{report.machine.cpus} CPUs); numbers are lower than on a quiet machine."
        )
    if args.smoke:
        out.append("Smoke run: N is tiny, the numbers say nothing about speed.")
    return out


def _clean(workdir: Path) -> None:
    """Broker data and peer state are large and useless after the run; logs stay."""
    for path in [workdir / "kafka" / "data", *workdir.glob("*/data"), *workdir.glob("*/state")]:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
