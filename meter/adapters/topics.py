"""Kafka topic administration: create the topics the meter needs, with partitions and retention."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from meter.adapters.kafka_security import PLAINTEXT, kafka_python_args
from meter.config import KafkaSecurity

log = logging.getLogger(__name__)


BROKER_DEFAULT = -1
"""A replication factor that means the broker's `default.replication.factor` (KIP-464)."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic the meter reads or writes, with the settings it is created with when missing."""

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication: int = 1,
    timeout_s: float = 30.0,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the missing topics; returns the names created. Existing topics are left as they are,
    except that a topic with fewer partitions than asked for is reported (never repartitioned).
    `replication=BROKER_DEFAULT` leaves the replication factor to the broker."""
    specs = list(specs)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="meter-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **kafka_python_args(security),
    )
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=replication,
                            topic_configs=dict(spec.config),
                        )
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(spec.name)
                log.info("created topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def partition_counts(
    bootstrap: str, names: Iterable[str], *, security: KafkaSecurity = PLAINTEXT
) -> dict[str, int]:
    """Partitions per existing topic (missing topics are absent from the result)."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="meter-admin", **kafka_python_args(security)
    )
    try:
        described = admin.describe_topics(list(names))
        return {d["name"]: len(d["partitions"]) for d in described if not d.get("error_code")}
    finally:
        admin.close()


def settled_partition_counts(
    bootstrap: str,
    names: Iterable[str],
    timeout_s: float = 15.0,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> dict[str, int]:
    """`partition_counts` once every topic in `names` shows its partitions: a topic created a
    moment ago can be missing from the metadata, or listed without partitions, for a while."""
    names = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        counts = partition_counts(bootstrap, names, security=security)
        if all(counts.get(name) for name in names) or time.monotonic() >= deadline:
            return counts
        time.sleep(0.2)


__all__ = [
    "BROKER_DEFAULT",
    "TopicSpec",
    "ensure_topics",
    "partition_counts",
    "settled_partition_counts",
]
