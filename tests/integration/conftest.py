"""Session fixtures for integration tests: a real Kafka broker and per-test topics.

Uses METER_KAFKA_BOOTSTRAP when it is set; otherwise starts the local broker from the Maven jars
(the same code as `meter kafka start`) on free loopback ports for the session, stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meter.adapters.broker import BrokerLayout, LocalBroker, free_port
from meter.adapters.topics import TopicSpec, ensure_topics
from tests.harness.deployment import Deployment, deployment_factory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kafka_home() -> Path:
    return REPO / "deploy" / "kafka"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory, kafka_home: Path) -> Iterator[str]:
    configured = os.environ.get("METER_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    layout = BrokerLayout(
        home=kafka_home,
        state=tmp_path_factory.mktemp("kafka"),
        port=free_port(),
        controller_port=free_port(),
    )
    broker = LocalBroker(layout)
    broker.start(timeout=120)
    print(f"\n[integration] real Kafka broker started at {layout.bootstrap} (pid {broker.pid()})")
    try:
        yield layout.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to this test: topics and consumer groups are never shared between tests."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"


@pytest.fixture
def make_topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> Callable[..., str]:
    def make(base: str, partitions: int = 1) -> str:
        name = unique(base)
        ensure_topics(kafka_bootstrap, [TopicSpec(name, partitions)])
        return name

    return make


@pytest.fixture
def deployments(
    kafka_bootstrap: str, tmp_path: Path, unique: Callable[[str], str]
) -> Iterator[Callable[..., Deployment]]:
    """`deployments(policy_yaml, partitions=..., ...)` builds a `Deployment` for this test; every
    worker it starts is stopped at the end, and their logs are printed."""
    with deployment_factory(kafka_bootstrap, tmp_path, unique) as make:
        yield make
