"""Peer (c), the ceiling: an aiokafka consumer that decodes each record's JSON and counts calls
and records per app in a dict; no state, no output.

    python -m bench.peers.ceiling BOOTSTRAP TOPIC GROUP EVENTS RESULT_JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench.measure import DrainClock


async def drain(bootstrap: str, topic: str, group: str, events: int, result: Path) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    await consumer.start()
    clock = DrainClock(events, result, "ceiling")
    counts: dict[str, list[int]] = {}
    loads = json.loads
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                clock.start()
                for rec in records:
                    ev = loads(rec.value)
                    cell = counts.get(ev["app_id"])
                    if cell is None:
                        cell = counts[ev["app_id"]] = [0, 0]
                    cell[0] += 1
                    cell[1] += ev.get("records", 0)
                if clock.add(len(records)):
                    return
    finally:
        await consumer.stop()


def main(argv: list[str]) -> int:
    bootstrap, topic, group, events, result = argv
    asyncio.run(drain(bootstrap, topic, group, int(events), Path(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
