"""Peer (e), Quix Streams: calls (Count) and records (Sum) per app, the record key, in 15-minute
tumbling windows of the record timestamp (the producer sets it to the event time), with Quix's
defaults: RocksDB state with changelog topics, at-least-once.

    python -m bench.peers.quix_count BOOTSTRAP TOPIC GROUP EVENTS STATE_DIR RESULT_JSON
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Sum

from bench.measure import DrainClock


def main(argv: list[str]) -> int:
    bootstrap, topic, group, events, state_dir, result = argv
    clock = DrainClock(int(events), Path(result), "quixstreams")
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel=logging.WARNING,
    )
    source = app.topic(topic, value_deserializer="json")
    sdf = app.dataframe(source)
    sdf = (
        sdf.tumbling_window(timedelta(minutes=15), grace_ms=timedelta(minutes=1))
        .agg(calls=Count(), records=Sum("records"))
        .current()
    )

    def counted(_: Any) -> None:
        if clock.add():
            app.stop()

    sdf = sdf.update(counted)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
