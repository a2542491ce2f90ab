"""The worker's faust app is wired the way exactness needs (no broker: nothing is started)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from prometheus_client import CollectorRegistry

from meter.adapters.changelog import ChangelogTracker
from meter.adapters.policy_file import read_policy
from meter.adapters.routed_offsets import RoutedOffsets
from meter.adapters.router import Router, _Rebalance, routes
from meter.adapters.telemetry import Telemetry
from meter.adapters.wire import (
    MAX_RECORD_BYTES,
    TICK,
    TRUNCATED_BYTES,
    Report,
    dead_letter,
    decode_routed,
    encode_routed,
    encode_routed_chunks,
    ingest_time,
)
from meter.adapters.worker import MeterWorker
from meter.config import KafkaSecurity
from meter.core.events import ApiCall, Rejection
from meter.core.ledger import LedgerSettings, PartitionLedger, Pending
from meter.core.outputs import ALERTS, WINDOWS, Outbound
from meter.worker_settings import WorkerSettings

EXAMPLE = Path(__file__).parents[2] / "meter" / "examples" / "demo-2022.yaml"


def worker_for(settings: WorkerSettings) -> MeterWorker:
    """A worker built (not started) for `settings` and the example policy."""
    policy = read_policy(EXAMPLE)
    return MeterWorker(settings, policy, "127.0.0.1:1", Telemetry(CollectorRegistry(), policy, 10))


def router_with(
    settings: WorkerSettings, now_ms: int, sent: list[tuple[str, dict[str, object]]]
) -> Router:
    """A router for the example policy whose sends are appended to `sent` and succeed."""
    policy = read_policy(EXAMPLE)

    async def send(topic: str, **kw: object) -> asyncio.Future[None]:
        sent.append((topic, kw))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return Router(
        settings, policy, "127.0.0.1:1", Telemetry(CollectorRegistry(), policy, 10), send,
        lambda: now_ms / 1000,
    )  # fmt: skip


def test_the_producer_is_idempotent_so_a_retried_send_is_not_written_twice(
    tmp_path: Path,
) -> None:
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    worker = worker_for(settings)

    async def build() -> object:
        return worker.app.producer._new_producer()

    client = asyncio.run(build())
    # aiokafka keeps a transaction manager (producer id and sequence numbers) only when
    # idempotence is on; acks must then be "all".
    assert client._txn_manager is not None  # type: ignore[attr-defined]
    assert client._sender._acks == -1  # type: ignore[attr-defined]


def test_ingest_time_is_the_record_timestamp_capped_at_the_workers_clock() -> None:
    now = 1_700_000_000_000
    assert ingest_time(now - 500, now) == now - 500
    assert ingest_time(now + 3_600_000, now) == now  # a producer clock running ahead
    assert ingest_time(None, now) == now
    assert ingest_time(-1, now) == now  # no timestamp (-1 in old message formats)


def test_routed_records_carry_their_ingest_time() -> None:
    call = ApiCall("c1", 1, "a1", None, "/x", 3, 200, None, None)
    routed = decode_routed(encode_routed([call], 1234))
    assert routed is not None
    assert routed.events == [call]
    assert routed.ingest_ms == 1234
    old = decode_routed(b'{"e":[["c1",1,"a1",null,"/x",3,200,null,null]]}')
    assert old is not None
    assert old.ingest_ms is None  # written before the field existed
    assert decode_routed(TICK) is None


def test_an_unknown_app_claiming_an_org_is_routed_to_both_owners() -> None:
    policy = read_policy(EXAMPLE)
    known = next(iter(policy.apps))
    org = policy.org_of(known, None)
    assert routes(policy, ApiCall("1", 0, known, org_id="other")) == ((f"org:{org}", None),)
    assert routes(policy, ApiCall("2", 0, "stray")) == (("app:stray", None),)
    assert routes(policy, ApiCall("3", 0, "stray", org_id="zeta")) == (
        ("app:stray", "app"),
        ("org:zeta", "org"),
    )
    call = ApiCall("3", 0, "stray", org_id="zeta")
    routed = decode_routed(encode_routed([call, call], 5, ["app", "org"]))
    assert routed is not None
    assert routed.levels == ["app", "org"]
    plain = decode_routed(encode_routed([call], 5, [None]))
    assert plain is not None
    assert plain.levels is None  # nothing to say: the field is left out


def test_the_session_timeout_reaches_both_consumer_groups(tmp_path: Path) -> None:
    settings = WorkerSettings(
        policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path, session_timeout_ms=10_000
    )
    worker = worker_for(settings)
    assert worker.app.conf.broker_session_timeout == 10.0
    assert worker.app.conf.broker_heartbeat_interval == 1.0
    router = worker.router.consumer_settings()
    assert (router["session_timeout_ms"], router["heartbeat_interval_ms"]) == (10_000, 1_000)
    assert router["group_id"] == f"{settings.group}-router"


def test_routed_records_are_cut_to_fit_the_size_limit() -> None:
    calls = [ApiCall(f"{i:0100d}", i, "a1", None, "/" + "e" * 255, 1) for i in range(100)]
    levels: list[str | None] = ["app", "org"] * 50
    chunks = encode_routed_chunks(calls, 9, levels, max_bytes=8_000)
    assert len(chunks) > 4
    assert all(len(c) <= 8_000 for c in chunks)
    decoded = [decode_routed(c) for c in chunks]
    assert [e for r in decoded if r for e in r.events] == calls
    assert [lv for r in decoded if r for lv in r.levels or ()] == levels
    assert encode_routed_chunks(calls[:2], 9) == [encode_routed(calls[:2], 9)]


def test_a_dead_letter_copy_that_would_not_fit_keeps_the_head_and_says_so() -> None:
    rejection = [Rejection("not_utf8", "not UTF-8 at byte 0", None)]
    small = dead_letter(b"\xffabc", rejection, "calls", 2, 17)
    assert (small.key, small.value) == (b"calls:2:17", b"\xffabc")
    assert "meter-truncated" not in dict(small.headers)
    value = b"\xff" + b"x" * (MAX_RECORD_BYTES - 100)
    big = dead_letter(value, rejection, "calls", 2, 18)
    headers = dict(big.headers)
    assert big.value == value[:TRUNCATED_BYTES]
    assert headers["meter-truncated"] == b"true"
    assert headers["meter-original-bytes"] == str(len(value)).encode()
    assert headers["meter-original-sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["meter-reason"] == b"not_utf8"


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, list[object]] = {}

    def get(self, key: str) -> list[object] | None:
        return self.data.get(key)

    def put(self, key: str, value: list[object]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> list[tuple[str, list[object]]]:
        return list(self.data.items())

    def partition(self, partition: int) -> DictStore:
        return self

    async def ship(self) -> None:
        """No changelog here: the writes are already in the dict."""


class CommitLog:
    """faust's consumer as the worker's commits see it: an assignment, and what was committed."""

    def __init__(self, assigned: set[TP], accept: bool = True) -> None:
        self.assigned = assigned
        self.accept = accept
        self.commits: list[dict[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self.assigned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        return self.accept


@pytest.mark.parametrize(
    ("first_delivered", "read_back", "commit"),
    [
        (2, None, 51),  # a restart replays from faust's commit: skipped whole
        (30, None, 51),  # faust starts past its commit, at records the ledger has
        (120, (51, 120), 121),  # and beyond them: the counter reads 51..119 back itself
    ],
)
def test_the_routed_offset_committed_is_what_the_ledger_applied_whatever_faust_delivered(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_delivered: int,
    read_back: tuple[int, int] | None,
    commit: int,
) -> None:
    """The group's committed offset of a routed partition is 1, the ledger (restored from the
    changelog) holds every record up to 50, and faust delivers first the record at
    `first_delivered`. faust's own commit for the routed topic is off (it stayed at 1 for good in
    such a case in CI); the worker commits what the ledger applied."""
    policy = read_policy(EXAMPLE)
    tls = KafkaSecurity(protocol="SSL")
    settings = WorkerSettings(
        policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path, kafka_security=tls
    )
    worker = worker_for(settings)
    assert worker._routed.acks is False  # faust commits nothing of the routed topic
    tp = TP(settings.routed_topic, 0)
    consumer = CommitLog({tp, TP(settings.routed_topic, 1)})
    worker.app._consumer = consumer
    reads: list[tuple[int, int]] = []

    async def read_range(
        bootstrap: str, topic: str, p: int, start: int, end: int, *, security: KafkaSecurity
    ) -> list[object]:
        assert security is tls  # read back with the worker's own credentials
        reads.append((start, end))
        return [(o, TICK, 0) for o in range(start, end)]

    store = DictStore()
    restored = PartitionLedger(0, policy, LedgerSettings(), store)
    restored.durable_offset = restored.meta.last_offset = 50

    async def bootstrap(partition: int) -> tuple[PartitionLedger, DictStore, int | None]:
        worker.counter.ledgers[partition] = restored
        return restored, store, restored.next_offset()

    monkeypatch.setattr("meter.adapters.counter.read_range", read_range)
    monkeypatch.setattr(worker.counter, "_bootstrap", bootstrap)
    msg = SimpleNamespace(partition=0, offset=first_delivered, timestamp=None, value=TICK)

    async def run() -> None:
        await worker.counter.count(msg)
        await worker._commit()
        await worker._commit()  # nothing new: nothing committed again

    asyncio.run(run())
    assert reads == ([read_back] if read_back else [])
    assert consumer.commits == [{tp: commit}]


def test_a_ledger_with_no_state_reads_back_from_the_partitions_first_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker was killed before any of its changelog records reached Kafka, and before it
    committed; the next one has no state for the partition, and faust hands it record 7 first
    (it dropped records 0..6 from its buffers in a rebalance, and with no committed offset it
    went on past them). Those calls were lost in a soak run: the counter must read them back."""
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    worker = worker_for(settings)
    tp = TP(settings.routed_topic, 0)
    consumer = CommitLog({tp})
    worker.app._consumer = consumer
    worker.counter.app.store = DictStore()  # type: ignore[assignment]  # no state at all
    reads: list[tuple[int, int]] = []

    async def first_offset(bootstrap: str, topic: str, p: int, *, security: object) -> int:
        return 0

    async def read_range(
        bootstrap: str, topic: str, p: int, start: int, end: int, *, security: object
    ) -> list[object]:
        reads.append((start, end))
        return [(o, TICK, 0) for o in range(start, end)]

    monkeypatch.setattr("meter.adapters.counter.first_offset", first_offset)
    monkeypatch.setattr("meter.adapters.counter.read_range", read_range)
    msg = SimpleNamespace(partition=0, offset=7, timestamp=None, value=TICK)

    async def run() -> None:
        await worker.counter.count(msg)
        await worker._commit()

    asyncio.run(run())
    assert reads == [(0, 7)]
    assert consumer.commits == [{tp: 8}]


@pytest.mark.parametrize("revoked_in", ["first_offset", "read_range"])
def test_a_partition_revoked_while_its_record_waits_on_kafka_is_left_to_its_new_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revoked_in: str
) -> None:
    """During a network fault the counter waited on Kafka to build a ledger (or to read back
    skipped records) while the group moved the partition to another worker. Seen in
    test_network_faults: the ledger was kept anyway, stale, and its watermark stayed on the
    metrics page for good. What the wait returned is dropped: no ledger, nothing applied."""
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    worker = worker_for(settings)
    consumer = CommitLog({TP(settings.routed_topic, 0)})
    worker.app._consumer = consumer
    worker.counter.app.store = DictStore()  # type: ignore[assignment]
    applied: list[int] = []

    async def first_offset(bootstrap: str, topic: str, p: int, *, security: object) -> int:
        if revoked_in == "first_offset":
            worker.counter.revoked([0])
        return 0

    async def read_range(
        bootstrap: str, topic: str, p: int, start: int, end: int, *, security: object
    ) -> list[object]:
        if revoked_in == "read_range":
            worker.counter.revoked([0])
        return [(o, TICK, 0) for o in range(start, end)]

    monkeypatch.setattr("meter.adapters.counter.first_offset", first_offset)
    monkeypatch.setattr("meter.adapters.counter.read_range", read_range)
    monkeypatch.setattr(worker.counter, "_apply", lambda ledger, offset, *a: applied.append(offset))
    msg = SimpleNamespace(partition=0, offset=7, timestamp=None, value=TICK)

    async def run() -> None:
        await worker.counter.count(msg)
        await worker._commit()

    asyncio.run(run())
    assert worker.counter.ledgers == {}
    assert applied == []
    assert consumer.commits == []


def test_routed_offsets_are_committed_after_the_changelog_records_queued_before_them() -> None:
    tracker = ChangelogTracker(lambda exc: None)
    tp0, tp1 = TP("routed", 0), TP("routed", 1)
    consumer = CommitLog({tp0, tp1})
    offsets = RoutedOffsets(lambda: consumer, "routed", lambda: tracker)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        before: asyncio.Future[None] = loop.create_future()
        tracker.track(before)
        committing = asyncio.create_task(offsets.commit({0: 10, 2: 7}))
        await asyncio.sleep(0.01)
        assert not committing.done()  # waits for the changelog record queued before
        after: asyncio.Future[None] = loop.create_future()
        tracker.track(after)  # queued after the commit began: not waited for
        before.set_result(None)
        assert await asyncio.wait_for(committing, 1) == {0: 10}  # partition 2 is not assigned
        after.set_result(None)
        assert await offsets.commit({0: 10, 1: 3}) == {1: 3}  # 0 is not ahead: not again
        offsets.forget([0])  # revoked: its next commit starts afresh
        consumer.accept = False  # the group rebalanced meanwhile
        assert await offsets.commit({0: 10}) == {}
        assert offsets.committed == {1: 3}

    asyncio.run(run())
    assert consumer.commits == [{tp0: 10}, {tp1: 3}, {tp0: 10}]


def test_a_rebalance_commits_what_leaves_before_it_goes(tmp_path: Path) -> None:
    policy = read_policy(EXAMPLE)
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    worker = worker_for(settings)
    topic = settings.routed_topic
    consumer = CommitLog({TP(topic, 0), TP(topic, 1)})
    worker.app._consumer = consumer
    for p, last in ((0, 40), (1, 7)):
        ledger = PartitionLedger(p, policy, LedgerSettings(), DictStore())
        ledger.durable_offset = ledger.meta.last_offset = last
        worker.counter.ledgers[p] = ledger
    worker.app.rebalancing = True  # the periodic commit waits out a rebalance
    asyncio.run(worker._commit())
    assert consumer.commits == []
    asyncio.run(worker._on_revoked(worker.app, {TP(topic, 1), TP("other", 1)}))
    assert consumer.commits == [{TP(topic, 1): 8}]
    assert set(worker.counter.ledgers) == {0}


def test_the_router_counts_each_event_no_later_than_its_arrival(tmp_path: Path) -> None:
    """A gateway whose clock runs ahead (within the allowed skew) cannot push its partition's
    event time past when its records reached Kafka; beyond the skew an event is dead-lettered."""
    policy = read_policy(EXAMPLE)
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    sent: list[tuple[str, dict[str, object]]] = []
    now = 1_646_136_000_000
    router = router_with(settings, now, sent)
    router.sources.assigned([0], now_s=0)
    app = next(iter(policy.apps))

    def record(offset: int, event_ms: int, arrived_ms: int) -> ConsumerRecord[bytes, bytes]:
        value = json.dumps({"id": f"e{offset}", "time": event_ms, "app_id": app}).encode()
        return ConsumerRecord(
            settings.input_topic, 0, offset, arrived_ms, 0, None, value, None, 0, len(value), []
        )

    batch = {
        TopicPartition(settings.input_topic, 0): [
            record(0, now - 120_000, now - 60_000),  # on time
            record(1, now + 60_000, now - 30_000),  # a minute ahead of its arrival
            record(2, now + 3_600_000, now),  # an hour ahead: beyond the skew
        ]
    }
    asyncio.run(router._route(batch))
    assert router.sources.sources[0].wm == now - 30_000
    dead = [kw for topic, kw in sent if topic == settings.dlq_topic]
    assert [dict(kw["headers"])["meter-reason"] for kw in dead] == [b"future_time"]  # type: ignore[call-overload]


def test_a_subject_is_routed_where_kafkas_default_partitioner_puts_its_key() -> None:
    """Events are grouped per routed partition now, not sent keyed: each subject must still land
    where a keyed send put it, or its state would be split across partitions after an upgrade."""
    from aiokafka.partitioner import DefaultPartitioner  # noqa: PLC0415

    from meter.adapters.wire import routed_partition  # noqa: PLC0415

    partitioner = DefaultPartitioner()
    for n in (1, 4, 12, 24):
        every = list(range(n))
        for i in range(500):
            key = f"org:customer-{i}" if i % 2 else f"app:app-{i}"
            assert routed_partition(key, n) == partitioner(key.encode(), every, every)


def test_a_router_reports_its_progress_before_its_partitions_move(tmp_path: Path) -> None:
    """Reports go out at most every REPORT_MS, so the event time of the last batches may not
    have been reported when a rebalance takes the partitions away, and their next owner starts
    with no progress of its own: on revocation the router reports at once, or the watermarks
    would wait for the partitions to turn idle (seen: 1 run in 4 of the two-worker test)."""
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    sent: list[tuple[str, dict[str, object]]] = []
    now = 1_646_136_000_000
    router = router_with(settings, now, sent)
    tp = TopicPartition(settings.input_topic, 1)
    router.sources.assigned([1], now_s=0)
    router.sources.routed(1, now - 5_000, now_s=0)  # a batch routed, not yet reported
    router.consumer = SimpleNamespace(  # type: ignore[assignment]
        assignment=lambda: {tp},
        partitions_for_topic=lambda topic: {0, 1, 2, 3},
        last_stable_offset=lambda tp: None,
        highwater=lambda tp: None,
    )
    asyncio.run(_Rebalance(router).on_partitions_revoked([tp]))
    reports = [decode_routed(kw["value"]) for topic, kw in sent if topic == settings.routed_topic]  # type: ignore[arg-type]
    assert len(reports) == settings.partitions  # one to every routed partition
    assert all(isinstance(r, Report) and r.sources[1][0] == now - 5_000 for r in reports)


def test_outputs_go_out_as_batches_per_partition_and_a_refused_batch_is_retried_alone(
    tmp_path: Path,
) -> None:
    """The counter publishes an outbox as record batches per output topic and partition, each
    record with its id header and time; a batch Kafka refuses stays unsent, the others are
    acknowledged."""
    worker = worker_for(
        WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path, partitions=4)
    )
    counter = worker.counter
    counter.out_partitions.update(
        {worker.settings.alerts_topic: 2, worker.settings.windows_topic: 4}
    )
    policy = read_policy(EXAMPLE)
    ledger = PartitionLedger(3, policy, LedgerSettings(), DictStore())

    def pending(kind: str, n: int) -> Pending:
        value = {"n": n, "kind": "cap", "severity": "warning", "revision": 0}
        record = Outbound(kind, f"{kind}-{n}", f"k{n}", value, 1_700_000_000_000 + n,
                          headers=(("h", "v"),))  # fmt: skip
        return Pending(f"s|{n}", record)

    batch = [pending(ALERTS, 1), pending(WINDOWS, 2), pending(ALERTS, 3), pending(WINDOWS, 4)]
    calls: list[tuple[str, int, list[object]]] = []

    class Sender:
        async def send_records(self, topic: str, partition: int, records: list[object]) -> object:
            calls.append((topic, partition, records))
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if topic == worker.settings.windows_topic:
                ack.set_exception(RuntimeError("refused"))
            else:
                ack.set_result(None)
            return [(ack, len(records))]

    counter.app.sender = Sender  # type: ignore[assignment]
    acknowledged: list[list[Pending]] = []
    ledger.acknowledge = acknowledged.append  # type: ignore[method-assign]
    asyncio.run(counter._send_batch(3, ledger, batch))

    assert [(t, p, [r[0] for r in rs]) for t, p, rs in calls] == [  # type: ignore[index]
        (worker.settings.alerts_topic, 1, [b"k1", b"k3"]),  # partition 3 mod 2
        (worker.settings.windows_topic, 3, [b"k2", b"k4"]),
    ]
    _, value, ts, headers = calls[0][2][0]  # type: ignore[misc]
    assert json.loads(value) == {"n": 1, "kind": "cap", "severity": "warning", "revision": 0}
    assert ts == 1_700_000_000_001
    assert headers == [("meter-id", b"alerts-1"), ("h", b"v")]
    assert acknowledged == [[batch[0], batch[2]]]
    assert counter.unsent[3] == [batch[1], batch[3]]


def test_a_partition_paused_as_ahead_is_resumed_on_a_poll_that_brings_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partition 1 was paused, ahead of partition 0's backlog; partition 0's last batch was
    routed and the heartbeat has since found it read to its end. No batch will come, so the
    re-evaluation must happen on an empty poll, or partition 1 stays paused for good."""
    import meter.adapters.router as router_module  # noqa: PLC0415

    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    now = 1_646_136_000_000
    router = router_with(settings, now, [])
    tp0, tp1 = (TopicPartition(settings.input_topic, p) for p in (0, 1))
    router.sources.assigned([0, 1], now_s=0)
    router.sources.routed(0, now - 6 * 3_600_000, now_s=0)
    router.sources.routed(1, now, now_s=0)
    router.sources.positions({0: False, 1: False})
    assert router.sources.ahead(now_s=0) == ({1}, {0})  # the pause, as after a batch
    router.sources.positions({0: True})  # the heartbeat's report, after partition 0's last batch
    resumed: list[TopicPartition] = []

    class Consumer:
        def __init__(self, **_: object) -> None:
            self.polls = 0

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        def subscribe(self, topics: list[str], listener: object) -> None: ...

        async def getmany(self, **_: object) -> dict[TopicPartition, list[ConsumerRecord]]:
            self.polls += 1
            if self.polls > 3:
                raise asyncio.CancelledError
            return {}

        def assignment(self) -> set[TopicPartition]:
            return {tp0, tp1}

        def paused(self) -> set[TopicPartition]:
            return {tp1} - set(resumed)

        def pause(self, *tps: TopicPartition) -> None:
            assert not tps

        def resume(self, *tps: TopicPartition) -> None:
            resumed.extend(tps)

    monkeypatch.setattr(router_module, "AIOKafkaConsumer", Consumer)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(router._consume())
    assert resumed == [tp1]
