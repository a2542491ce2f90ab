"""Plain kafka-python producing and reading for tests (clients no meter code wrote), and a
local broker for the on-demand runners."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from meter.adapters.broker import BrokerLayout, LocalBroker, free_port

REPO = Path(__file__).resolve().parents[2]


def local_broker(prefix: str) -> LocalBroker:
    """A started broker of its own on free ports, its data in a new temporary dir (the soak,
    chaos and endurance runners use one when no --bootstrap is given)."""
    layout = BrokerLayout(
        home=REPO / "deploy" / "kafka",
        state=Path(tempfile.mkdtemp(prefix=prefix)),
        port=free_port(),
        controller_port=free_port(),
    )
    broker = LocalBroker(layout)
    broker.start(timeout=120)
    return broker


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | None],
    *,
    key: bytes | None = None,
    keys: Sequence[bytes | None] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    partition: int | None = None,
) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    try:
        for i, value in enumerate(values):
            k = keys[i] if keys is not None else key
            producer.send(topic, value=value, key=k, headers=headers or [], partition=partition)
            n += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return n


def read_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    settle: float = 0.0,
    abort: Callable[[], bool] | None = None,
    client_args: Mapping[str, Any] | None = None,
) -> list[ConsumerRecord]:
    """Everything on `topic` from the beginning: waits for `expect` records (then `settle` more
    seconds, to catch extras such as duplicates), or until the end offsets when `expect` is None.
    Returns early when `abort()` says so (e.g. the process under test died). `client_args`: more
    arguments of the consumer (TLS, SASL)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **(client_args or {})
    )
    try:
        deadline = time.monotonic() + timeout
        parts: list[TopicPartition] = []
        while not parts and time.monotonic() < deadline:
            ids = consumer.partitions_for_topic(topic)
            parts = [TopicPartition(topic, p) for p in sorted(ids or [])]
            if not parts:
                time.sleep(0.2)
        if not parts:
            return []
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[ConsumerRecord] = []
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if expect is None:
                ends = consumer.end_offsets(parts)
                if all(consumer.position(tp) >= ends[tp] for tp in parts):
                    return out
            elif len(out) >= expect:
                settle_until = settle_until or now + settle
                if now >= settle_until:
                    return out
            if now > deadline or (abort is not None and abort()):
                return out
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
    finally:
        consumer.close()


class BackgroundProducer(threading.Thread):
    """Produces `values` (with `keys`) to `topic` at a steady pace, in its own thread."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        values: Sequence[bytes],
        keys: Sequence[bytes | None],
        pause: float,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.values, self.keys = bootstrap, topic, values, keys
        self.pause = pause
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
            try:
                for value, key in zip(self.values, self.keys, strict=True):
                    producer.send(self.topic, value=value, key=key)
                    self.sent += 1
                    time.sleep(self.pause)
                producer.flush(timeout=60)
            finally:
                producer.close()
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the background producer did not finish"
        assert self.error is None, f"the background producer failed: {self.error!r}"
        assert self.sent == len(self.values)
