"""What a test writes into a deployment's Kafka topics: records and events on its input topic,
a push of event time on every input partition, records straight onto the routed topic."""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer

from tests.harness.data import Event, dumps, event
from tests.harness.kafka import produce


class Producing:
    """Mixed into `Deployment`, which names the topics: each test keeps calling `d.send(...)`,
    `d.push(...)`."""

    bootstrap: str
    input_topic: str
    routed_topic: str
    partitions: int
    input_partitions: int | None

    def send(
        self,
        values: Sequence[bytes | None],
        *,
        keys: Sequence[bytes | None] | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> int:
        return produce(
            self.bootstrap,
            self.input_topic,
            values,
            keys=keys,
            headers=headers,
            partition=partition,
        )

    def send_events(
        self,
        events: Sequence[Event],
        *,
        keys: Sequence[bytes | None] | None = None,
        partition: int | None = None,
    ) -> int:
        """One plain JSON event per record."""
        return self.send([dumps(e) for e in events], keys=keys, partition=partition)

    def push(self, time_ms: int, apps: Sequence[str]) -> list[Event]:
        """One event of each app at `time_ms` on every input partition: every input partition's
        event time reaches `time_ms`, so every window that ends a grace before it closes. Returns
        the events sent (they count, in windows at `time_ms`)."""
        partitions = self.input_partitions or self.partitions
        sent = []
        for p in range(partitions):
            events = [event(f"push-{app}-{time_ms}-{p}", time_ms, app) for app in apps]
            self.send_events(events, partition=p)
            sent += events
        return sent

    def send_each(
        self, records: Sequence[tuple[bytes | None, list[tuple[str, bytes]]]], partition: int = 0
    ) -> list[tuple[int, int]]:
        """Send (value, headers) records in order to one input partition; their offsets."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            futures = [
                producer.send(self.input_topic, value=v, headers=h, partition=partition)
                for v, h in records
            ]
            producer.flush(timeout=30)
            return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        finally:
            producer.close()

    def send_routed(self, values: Sequence[bytes], key: bytes) -> list[tuple[int, int]]:
        """Write records straight to the routed topic (as the router would): (partition,
        offset) of each."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        try:
            futures = [producer.send(self.routed_topic, value=v, key=key) for v in values]
            producer.flush(timeout=30)
            return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
        finally:
            producer.close()
