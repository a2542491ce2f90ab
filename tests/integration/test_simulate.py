"""`meter simulate` against the real broker: what lands on the topic, decoded the way meter's router
decodes it, is exactly what the truth says was sent, in every format."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from meter.core.events import decode_record
from meter.sim.command import add_simulate_parser
from meter.sim.framing import FORMATS
from meter.sim.truth import Truth, load_truth
from tests.harness.kafka import read_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SCENARIO = (
    "--calls", "3000", "--start", "2022-03-01", "--end", "2022-03-11", "--seed", "5",
    "--malformed", "0.02", "--duplicates", "0.05", "--late", "0.01", "--unknown", "0.02",
    "--restricted", "0.01", "--batch-size", "40",
)  # fmt: skip


def simulate(bootstrap: str, topic: str, truth: Path, *extra: str) -> Truth:
    parser = argparse.ArgumentParser(prog="meter")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    where = ("--bootstrap", bootstrap, "--topic", topic, "--truth", str(truth))
    args = parser.parse_args(["simulate", *where, *SCENARIO, *extra])
    assert args.handler(args, {}) == 0
    return load_truth(truth)


def check_topic_against_truth(bootstrap: str, topic: str, truth: Truth) -> list[bytes | None]:
    sent = truth.sent
    records = read_all(bootstrap, topic, expect=sent["messages"], timeout=60, settle=1.0)
    assert len(records) == sent["messages"]
    events = []
    rejected: Counter[str] = Counter()
    for record in records:
        decoded = decode_record(record.value, record.headers)
        events.extend(decoded.events)
        rejected.update(r.reason for r in decoded.rejections)
    assert len(events) == sent["events"]
    assert sum(rejected.values()) == sent["malformed"]
    assert dict(rejected) == sent["malformed_reasons"]
    distinct = {(e.app_id, e.id): e for e in events}
    assert len(distinct) == sent["calls"]
    assert len(events) - len(distinct) == sent["duplicates"]
    assert sum(e.records for e in distinct.values()) == sent["records"]
    assert sum(1 for e in distinct.values() if e.recipient) > 0
    return [record.key for record in records]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_topic_holds_exactly_what_the_truth_says_was_sent(
    fmt: str, kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique(f"sim-{fmt}")
    truth = simulate(kafka_bootstrap, topic, tmp_path / "truth.json", "--format", fmt)
    assert truth.sent["malformed"] > 20
    assert truth.sent["duplicates"] > 100
    assert truth.sent["late"] > 10
    keys = check_topic_against_truth(kafka_bootstrap, topic, truth)
    assert set(keys) >= {b"azure", b"research-pipeline", b"unregistered-scraper"}


def test_several_partitions_keys_by_org_and_a_paced_rate(
    kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique("sim-paced")
    started = time.monotonic()
    truth = simulate(
        kafka_bootstrap, topic, tmp_path / "t.json",
        "--partitions", "3", "--key", "org", "--calls", "1500", "--rate", "2000",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    sent = truth.sent["events"] + truth.sent["malformed"]
    assert elapsed >= sent / 2000 * 0.95
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(described["partitions"]) == 3
    keys = set(check_topic_against_truth(kafka_bootstrap, topic, truth))
    assert {b"microsoft", b"openai", b"acme-research", b"unregistered-scraper"} <= keys
