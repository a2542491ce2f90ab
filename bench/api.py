"""`python -m bench.api`: the usage store's ingest rate against the worker's output rate, and the
API's current-usage and check latency at fixed request rates.

    python -m bench.api --apps 2000 --rates 200,1000 --seconds 20 --out BENCHMARKS.md

1. A worker counts `--apps` apps (in orgs of 10) over two days of 2022: every app touches many
   15-minute, hourly and daily windows, which close on the clock (idle input) and are published.
   The worker's output rate is window records published per second while it drains.
2. `meter store` then reads that backlog from the start, into SQLite and into PostgreSQL (a
   throwaway server, as in the tests): its ingest rate is window records stored per second.
3. `meter api` reads the quota feed and the store; an open-loop client sends
   `GET /v1/apps/{id}/usage` and `GET /v1/check?app_id=...&endpoint=...` at each `--rates`
   requests per second (random apps) for `--seconds`. Latency is measured from each request's
   scheduled send time, so a stalled server cannot hide queueing (no coordinated omission).

Uses METER_KAFKA_BOOTSTRAP when set, else a local broker on free ports. The client runs on the
same machine as the API, the worker and the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shlex
import sqlite3
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from bench.drain import Process, scrape
from bench.infra import REPO, connect, kafka_version
from bench.latency import percentile
from bench.report import Machine
from bench.sections import markers, write_section
from meter.adapters.broker import free_port
from meter.adapters.topics import TopicSpec, ensure_topics
from meter.core.durations import DAY_MS
from tests.harness.postgres import postgres_server

log = logging.getLogger("bench.api")

START_MS = 1_646_092_800_000  # 2022-03-01
ENDPOINTS = ("/2/tweets/search/recent", "/2/users/lookup", "/2/tweets")
BEGIN, END = markers("bench.api")


def policy(apps: int, per_app: int) -> str:
    """Half the apps on a tier whose ten-year cap they exceed (the check answers 429 for them)."""
    lines = [
        "version: 1",
        "tiers:",
        "  small:",
        "    caps:",
        f"      - {{id: calls-10y, metric: calls, window: 3650d, limit: {max(1, per_app // 2)}}}",
        "  std:",
        "    caps:",
        f"      - {{id: calls-10y, metric: calls, window: 3650d, limit: {10 * per_app}}}",
        "      - {id: calls-15m, metric: calls, window: 15m, limit: 50}",
        "      - {id: records-1d, metric: records, window: 1d, limit: 5000}",
        "      - {id: search-1h, metric: calls, window: 1h, limit: 40,",
        "         endpoints: ['/2/tweets/search/*']}",
        "orgs:",
    ]
    orgs = max(1, apps // 10)
    lines += [
        f"  org-{o}:\n    caps:\n      - {{id: calls-1d, metric: calls, window: 1d, limit: 900}}"
        for o in range(orgs)
    ]
    lines.append("apps:")
    tiers = ("small", "std")
    lines += [f"  app-{a}: {{org: org-{a % orgs}, tier: {tiers[a % 2]}}}" for a in range(apps)]
    return "\n".join(lines) + "\n"


def events(apps: int, per_app: int, seed: int) -> list[bytes]:
    """Every app's calls at random times over two days, sent in time order (as gateways do)."""
    rng = random.Random(seed)
    calls = sorted(
        (START_MS + rng.randrange(2 * DAY_MS), a, i) for a in range(apps) for i in range(per_app)
    )
    return [
        json.dumps({
            "id": f"e-{a}-{i}", "app_id": f"app-{a}", "records": rng.randrange(50), "time": t,
            "endpoint": rng.choice(ENDPOINTS),
        }).encode()
        for t, a, i in calls
    ]  # fmt: skip


def produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    from kafka import KafkaProducer  # noqa: PLC0415

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256_000)
    for v in values:
        producer.send(topic, v)
    producer.flush()
    producer.close()


def meter_process(args: list[str], env: dict[str, str], log_path: Path) -> Process:
    return Process([sys.executable, "-m", "meter.cli", *args], log_path, env=env)


def wait(check: Any, timeout: float, what: str, procs: Sequence[Process] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if not p.alive():
                raise SystemExit(f"{what}: a process exited; see {p.log_path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def stored(database: str) -> int:
    try:
        if database.startswith("postgresql://"):
            with psycopg.connect(database) as conn:
                row = conn.execute("SELECT count(*) FROM window_revision").fetchone()
        else:
            with sqlite3.connect(database) as conn:
                row = conn.execute("SELECT count(*) FROM window_revision").fetchone()
    except (sqlite3.Error, psycopg.Error):
        return 0
    return int(row[0]) if row else 0


def ingest(
    env: dict[str, str], database: str, expected: int, workdir: Path, label: str
) -> dict[str, float]:
    """Run `meter store` from the start of the backlog until it holds `expected` records."""
    store = meter_process(["store", "--database", database], env, workdir / f"store-{label}.log")
    try:
        wait(lambda: stored(database) > 0, 120, f"{label} store to start", [store])
        t0, n0 = time.monotonic(), stored(database)
        wait(lambda: stored(database) >= expected, 1800, f"{label} store to catch up", [store])
        seconds = time.monotonic() - t0
    finally:
        store.stop()
    return {"records": expected - n0, "seconds": seconds, "per_s": (expected - n0) / seconds}


async def load(base: str, kind: str, apps: int, rate: float, seconds: float) -> dict[str, float]:
    """Open-loop GETs at `rate` per second; latency from each request's scheduled time."""
    rng = random.Random(7)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str, scheduled: float) -> None:
            async with session.get(url) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter()
        tasks = []
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            app = f"app-{rng.randrange(apps)}"
            check = f"{base}/v1/check?app_id={app}&endpoint={rng.choice(ENDPOINTS)}"
            url = f"{base}/v1/apps/{app}/usage" if kind == "usage" else check
            tasks.append(asyncio.ensure_future(one(url, scheduled)))
        await asyncio.gather(*tasks)
        achieved = len(latencies) / (time.perf_counter() - start)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "rate": rate, "achieved": achieved, "requests": len(ms),
        "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": ms[-1],
        "ok": statuses.get(200, 0), "denied": statuses.get(429, 0),
        "other": sum(n for s, n in statuses.items() if s not in (200, 429)),
    }  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    p.add_argument("--apps", type=int, default=2000)
    p.add_argument("--per-app", type=int, default=30, help="events per app")
    p.add_argument("--rates", default="200,1000", help="requests per second, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path, help="write the section into this markdown file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run = time.strftime("%Y%m%d-%H%M%S")
    workdir = REPO / "var" / "bench" / f"api-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    kafka = connect(workdir / "kafka")
    machine = Machine.probe(kafka_version())
    suffix = uuid.uuid4().hex[:6]
    topic = f"bench-api-{suffix}-calls"
    (workdir / "policy.yaml").write_text(policy(args.apps, args.per_app))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")} | {
        "METER_KAFKA_BOOTSTRAP": kafka.bootstrap, "METER_POLICY": str(workdir / "policy.yaml"),
        "METER_INPUT_TOPIC": topic, "METER_GROUP": f"bench-api-{suffix}",
        "METER_WINDOWS_TOPIC": f"bench-api-{suffix}-windows",
        "METER_ALERTS_TOPIC": f"bench-api-{suffix}-alerts",
        "METER_QUOTA_TOPIC": f"bench-api-{suffix}-quota", "METER_GRACE": "1s",
        "METER_IDLE_TIMEOUT": "3s", "METER_DATA_DIR": str(workdir / "worker"),
        "METER_STATE_DIR": str(workdir / "state"),
    }  # fmt: skip
    result: dict[str, Any] = {"apps": args.apps, "per_app": args.per_app}
    procs: list[Process] = []
    try:
        ensure_topics(kafka.bootstrap, [TopicSpec(topic, 4)])
        values = events(args.apps, args.per_app, 11)
        produce(kafka.bootstrap, topic, values)
        web = free_port()
        worker = meter_process(["worker", "--web-port", str(web)], env, workdir / "worker.log")
        procs.append(worker)
        samples: list[tuple[float, float]] = []

        def total(m: dict[str, float], prefix: str, missing: float = 0.0) -> float:
            found = [v for k, v in m.items() if k.startswith(prefix)]
            return sum(found) if found else missing

        def drained() -> bool:
            m = scrape(web)
            samples.append((time.monotonic(), total(m, "meter_window_records_total")))
            pending = total(m, "meter_outbox_pending_records", 1.0)
            return m.get("meter_events_total", 0) >= len(values) and pending == 0 and len(
                samples) > 8 and samples[-1][1] == samples[-9][1] > 0  # fmt: skip

        wait(drained, 1800, "the worker to count and close every window", procs)
        published = int(samples[-1][1])
        moving = [t for t, n in samples if 0 < n < published]
        first = moving[0] if moving else samples[0][0]
        last = next(t for t, n in samples if n >= published)
        result["worker"] = {"window_records": published, "seconds": last - first,
                            "per_s": published / max(last - first, 1e-9)}  # fmt: skip
        log.info("worker published %d window records", published)
        sqlite_db = str(workdir / "meter.db")
        result["store_sqlite"] = ingest(env, sqlite_db, published, workdir, "sqlite")
        with postgres_server() as pg:
            url = pg.create_database()
            result["store_postgres"] = ingest(env, url, published, workdir, "postgres")
        port = free_port()
        api = meter_process(["api", "--database", sqlite_db, "--port", str(port)], env,
                            workdir / "api.log")  # fmt: skip
        procs.append(api)
        base = f"http://127.0.0.1:{port}"
        wait(lambda: _ok(f"{base}/readyz"), 120, "the API to read the feed", procs)
        result["api"] = []
        for rate in (float(r) for r in args.rates.split(",")):
            for kind in ("usage", "check"):
                row = asyncio.run(load(base, kind, args.apps, rate, args.seconds))
                log.info("%s at %.0f/s: %s", kind, rate, row)
                result["api"].append({"kind": kind, **row})
    finally:
        for p in procs:
            p.stop()
        kafka.close()
    (workdir / "result.json").write_text(json.dumps(result, indent=1))
    text = section(result, machine, args)
    print(text)
    if args.out is not None:
        write_section(args.out, "bench.api", text)
    return 0


def _ok(url: str) -> bool:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def section(r: dict[str, Any], m: Machine, args: argparse.Namespace) -> str:
    cmd = "python -m bench.api " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    w, sq, pg = r["worker"], r["store_sqlite"], r["store_postgres"]
    lines = [
        BEGIN,
        "## Usage store and API (`python -m bench.api`)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `{cmd}`. "
        f"{m.cpus} CPUs ({m.cpu_model}), {m.ram_gib:.0f} GiB, Python {m.python}, Kafka "
        f"{m.kafka}; broker, worker, store, API and the load client on the same machine.",
        "",
        f"{r['apps']:,} apps in {max(1, r['apps'] // 10):,} orgs, {r['apps'] * r['per_app']:,} "
        "events over two days; caps on 15m, 1h and 1d windows, and a ten-year cap that half "
        "the apps exceed (their checks answer 429). Store: a backlog read from the start. "
        "API: random apps, open-loop at the offered rate, latency from each request's "
        "scheduled time.",
        "",
        "| stage | window records | seconds | records/s |",
        "|---|---:|---:|---:|",
        f"| worker publishes (while it drains the input) | {w['window_records']:,} | "
        f"{w['seconds']:.1f} | {w['per_s']:,.0f} |",
        f"| `meter store` ingests the backlog, SQLite | {sq['records']:,} | {sq['seconds']:.1f} | "
        f"{sq['per_s']:,.0f} |",
        f"| `meter store` ingests the backlog, PostgreSQL | {pg['records']:,} | "
        f"{pg['seconds']:.1f} | {pg['per_s']:,.0f} |",
        "",
        "| request | offered/s | achieved/s | requests | p50 ms | p99 ms | max ms | 200 | 429 "
        "| other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["api"]:
        path = "`GET /v1/apps/{id}/usage`" if row["kind"] == "usage" else "`GET /v1/check`"
        lines.append(
            f"| {path} | {row['rate']:,.0f} | {row['achieved']:,.0f} | {row['requests']:,} | "
            f"{row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} | {row['ok']:,} | "
            f"{row['denied']:,} | {row['other']:,} |"
        )
    lines += ["", END]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
