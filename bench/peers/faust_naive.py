"""Peer (d), the naive faust implementation: faust windowed tables, one update per event per
table: calls and records per app and per organisation in 15-minute tumbling windows of the record
timestamp (the producer sets it to the event time), RocksDB store with changelogs.

    python -m bench.peers.faust_naive BOOTSTRAP TOPIC GROUP PARTITIONS EVENTS DATA_DIR RESULT_JSON
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust

from bench.events import ORG_OF
from bench.measure import DrainClock

WINDOW = timedelta(minutes=15)
EXPIRES = timedelta(hours=1)


def build(
    bootstrap: str, topic: str, group: str, partitions: int, clock: DrainClock, data_dir: Path
) -> faust.App:
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        store="rocksdb://",
        datadir=str(data_dir),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="json")

    def table(name: str) -> Any:
        return app.Table(name, default=int, partitions=partitions).tumbling(WINDOW, expires=EXPIRES)

    calls, records = table("calls"), table("records")

    async def count(stream: Any) -> None:
        async for ev in stream:
            app_id = ev["app_id"]
            org = "org:" + ORG_OF.get(app_id, "unknown")
            n = ev.get("records", 0)
            calls[app_id] += 1
            records[app_id] += n
            calls[org] += 1
            records[org] += n
            clock.add()

    app.agent(source, name="count")(count)
    return app


def main(argv: list[str]) -> int:
    bootstrap, topic, group, partitions, events, data_dir, result = argv
    clock = DrainClock(int(events), Path(result), "faust-naive")
    app = build(bootstrap, topic, group, int(partitions), clock, Path(data_dir))
    # The harness stops the worker (SIGTERM) once the result file is written.
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
