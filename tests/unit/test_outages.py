"""Kafka outages as a process reports them: one line when Kafka stops answering, one when it is
back, the clients' own error lines counted instead of printed; the aiokafka coordinator fix; the
replication settings of topics; the local cluster's configuration."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from meter.adapters import coordinator_fix
from meter.adapters.broker import BrokerLayout, free_port
from meter.adapters.broker_cluster import LocalCluster, ProxiedListener
from meter.adapters.outages import ClientNoise, KafkaLink, LinkCollector, probe
from meter.adapters.runner import durability
from meter.cli import main


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def client_record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def meter_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "meter.adapters.outages"]


def test_an_outage_is_two_lines_and_the_client_noise_in_between_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    link = KafkaLink("127.0.0.1:9092", clock=clock, wall=lambda: 0.0)
    noise = ClientNoise(link)
    with caplog.at_level(logging.INFO, logger="meter.adapters.outages"):
        link.answered(1)
        link.failed("Connect call failed")
        shown = [
            noise.filter(client_record("aiokafka", f"Unable connect to node with id {i}"))
            for i in range(2000)
        ]
        for _ in range(10):
            clock.now += 2
            link.failed("Connect call failed")
        link.answered(1)
    assert not any(shown)
    lines = meter_lines(caplog)
    assert len(lines) == 3, lines
    assert "unreachable since" in lines[1]
    assert lines[2].startswith("Kafka at 127.0.0.1:9092 answers again after 20s")
    assert "2000 client error line(s) counted" in lines[2]
    assert link.client_errors == 2000
    assert link.outages == 1
    assert link.problem() is None


def test_while_kafka_answers_each_kind_of_client_line_shows_once_a_minute() -> None:
    clock = FakeClock()
    link = KafkaLink("b:1", clock=clock)
    link.answered(3)
    noise = ClientNoise(link)
    line = "Unable connect to node with id 2"
    node2 = [noise.filter(client_record("aiokafka", line)) for _ in range(5)]
    other = noise.filter(client_record("aiokafka.consumer.fetcher", "Failed fetch messages from 2"))
    clock.now += 60
    later = noise.filter(client_record("aiokafka", "Unable connect to node with id 2"))
    assert node2 == [True, False, False, False, False]
    assert other
    assert later
    # faust's producer logs "buffer full" at every flush while a broker fails over (43 lines in
    # a test_cluster_faults run): one kind like the others
    faust = "faust.transport.producer"
    full = [noise.filter(client_record(faust, f"producer buffer full size {n}")) for n in (1, 9, 8)]
    assert full == [True, False, False]
    # meter's own lines, and the clients' INFO, always pass
    assert noise.filter(client_record("meter.adapters.router", "router: x"))
    assert noise.filter(client_record("aiokafka", "Discovered coordinator", logging.INFO))


def test_the_link_reports_reminders_readiness_and_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    link = KafkaLink("b:1", clock=clock, wall=lambda: 0.0)
    registry = CollectorRegistry()
    registry.register(LinkCollector(link))
    assert link.problem() == "Kafka not probed yet"
    with caplog.at_level(logging.WARNING, logger="meter.adapters.outages"):
        link.failed("no answer within 5s")
        clock.now += 299
        link.failed("no answer within 5s")
        clock.now += 1
        link.failed("no answer within 5s")
    assert len(meter_lines(caplog)) == 2
    assert "still unreachable, for 300s" in meter_lines(caplog)[1]
    problem = link.problem()
    assert problem is not None
    assert problem.endswith("(300s: no answer within 5s)")
    assert registry.get_sample_value("meter_kafka_up") == 0.0
    assert registry.get_sample_value("meter_kafka_unreachable_seconds") == 300.0
    assert registry.get_sample_value("meter_kafka_outages_total") == 1.0


def test_the_probe_reports_a_port_where_nothing_listens() -> None:
    link = KafkaLink("nothing")

    async def run() -> None:
        task = asyncio.ensure_future(probe(link, f"127.0.0.1:{free_port()}", {}, interval_s=0.1))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if link.up is False:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert link.up is False
    assert link.outages == 1


def test_a_coordinator_lookup_without_any_known_broker_is_retriable_not_an_assertion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # restored after the test: the patch is for worker and API processes
    monkeypatch.setattr(AIOKafkaClient, "coordinator_lookup", AIOKafkaClient.coordinator_lookup)

    async def lookup() -> None:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")  # never bootstrapped
        await client.coordinator_lookup(0, "group")

    with pytest.raises(AssertionError, match="Did we not perform bootstrap"):
        asyncio.run(lookup())  # aiokafka's own behaviour: it kills a consumer's coordination
    coordinator_fix.install()
    coordinator_fix.install()  # once is enough; twice changes nothing
    with pytest.raises(KafkaConnectionError) as raised:
        asyncio.run(lookup())
    assert raised.value.retriable


def test_topics_with_three_replicas_or_more_need_two_in_sync() -> None:
    assert durability(None) == {}
    assert durability(1) == {}
    assert durability(2) == {}
    assert durability(3) == {"min.insync.replicas": "2"}
    assert durability(5) == {"min.insync.replicas": "2"}


def test_a_local_cluster_of_three_nodes_is_configured_for_replication_3_and_min_isr_2(
    tmp_path: Path,
) -> None:
    layout = BrokerLayout(home=tmp_path / "home", state=tmp_path / "kafka", port=19192,
                          controller_port=19193)  # fmt: skip
    cluster = LocalCluster(layout, 3, extra={2: ProxiedListener(29000, 29001)})
    assert cluster.bootstrap == "127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196"
    for node in cluster.nodes:
        node._write_properties()
    text = cluster.node(2).layout.properties_file.read_text()
    lines = set(text.splitlines())
    assert {
        "node.id=2",
        "controller.quorum.voters=1@127.0.0.1:19193,2@127.0.0.1:19195,3@127.0.0.1:19197",
        "listeners=PLAINTEXT://127.0.0.1:19194,CONTROLLER://127.0.0.1:19195,"
        "PROXIED://127.0.0.1:29000",
        "advertised.listeners=PLAINTEXT://127.0.0.1:19194,PROXIED://127.0.0.1:29001",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT",
        "default.replication.factor=3",
        "min.insync.replicas=2",
        "offsets.topic.replication.factor=3",
        "transaction.state.log.min.isr=2",
        "unclean.leader.election.enable=false",
        f"log.dirs={tmp_path / 'kafka-cluster' / 'node-2' / 'data'}",
    } <= lines
    assert "PROXIED" not in cluster.node(1).layout.properties_file.read_text()
    assert cluster.cluster_id() == cluster.cluster_id()  # one id, kept for every node


def test_meter_kafka_status_with_brokers_reports_each_node_of_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"METER_STATE_DIR": str(tmp_path)}
    port = free_port()
    assert main(["kafka", "status", "--brokers", "3", "--port", str(port)], env=env) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"node {i}: not running (pid None), 127.0.0.1:{port + 2 * (i - 1)}" for i in (1, 2, 3)
    ]
    assert main(["kafka", "status", "--brokers", "0"], env=env) == 2
    assert main(["kafka", "start", "--brokers", "3", "--secure"], env=env) == 2
    assert "--brokers" in capsys.readouterr().err
