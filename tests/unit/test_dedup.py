"""The dedup memory (digests in sorted runs, lazy forgetting) against a plain model: a dict of
key -> (offset, bucket), forgotten a bucket at a time, as the memory was before it was packed.
Random records (repeats within and across records, replays of one offset, old ingest times),
flushes, forgets and restarts from the stored blocks: every admission must be the same."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from meter.core.events import ApiCall
from meter.core.ledger.cache import WriteBackCache
from meter.core.ledger.dedup import BUCKET_MS, IdMemory
from meter.core.ledger.records import IdBlock, decode, digest
from tests.harness.ledger import JsonStore


def key_of(ev: ApiCall, level: str | None) -> str:
    return f"{ev.app_id}|{ev.id}" if level is None else f"{ev.app_id}|{ev.id}|{level}"


@dataclass
class Model:
    ids: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (offset, bucket)

    def admit(
        self, events: list[ApiCall], levels: list[str | None], offset: int, ingest_ms: int
    ) -> tuple[list[str], set[str], int]:
        seen: set[str] = set()
        admitted: list[str] = []
        fresh: set[str] = set()
        duplicates = 0
        for ev, level in zip(events, levels, strict=True):
            key = key_of(ev, level)
            if key in seen:
                duplicates += level != "org"
                continue
            seen.add(key)
            known = self.ids.get(key)
            if known is None:
                self.ids[key] = (offset, ingest_ms // BUCKET_MS)
                fresh.add(key)
            elif known[0] != offset:
                duplicates += level != "org"
                continue
            admitted.append(key)
        return admitted, fresh, duplicates

    def forget(self, horizon_ms: int) -> None:
        self.ids = {k: v for k, v in self.ids.items() if (v[1] + 1) * BUCKET_MS > horizon_ms}


record = st.tuples(
    st.lists(
        st.tuples(
            st.integers(0, 8), st.sampled_from(["a1", "a2"]), st.sampled_from([None, "app", "org"])
        ),
        max_size=12,
    ),
    st.integers(0, 2),  # 0: this record, 1: replay the previous offset, 2: an older ingest time
)
step = st.one_of(
    st.tuples(st.just("record"), record),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("restart"), st.none()),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(step, min_size=10, max_size=80), st.integers(1, 3))
def test_the_packed_memory_admits_exactly_what_the_plain_one_did(
    steps: list[tuple[str, object]], horizon_buckets: int
) -> None:
    check(steps, horizon_buckets)


def colliding(key: str) -> bytes:
    """Digests whose first halves are all equal, as if 64-bit hashes collided."""
    return bytes(8) + hashlib.blake2b(key.encode(), digest_size=8).digest()


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=10, max_size=80), st.integers(1, 3))
def test_digests_that_share_their_first_half_are_told_apart(
    steps: list[tuple[str, object]], horizon_buckets: int
) -> None:
    with mock.patch("meter.core.ledger.dedup.digest", colliding):
        check(steps, horizon_buckets)


def check(steps: list[tuple[str, object]], horizon_buckets: int) -> None:
    store = JsonStore()
    memory, model = IdMemory(0), Model()
    state = WriteBackCache(store)
    offset, ingest = 0, 10 * BUCKET_MS
    horizon = horizon_buckets * BUCKET_MS
    last: tuple[list[ApiCall], list[str | None], int, int] | None = None
    newest = ingest
    for kind, arg in steps:
        if kind in ("flush", "restart"):
            memory.save(state, offset)
            state.flush()
            last = None  # the ledger skips a record it has flushed (`PartitionLedger._replayed`)
        if kind == "restart":
            memory, state = IdMemory(0), WriteBackCache(store)
            for key, raw in store.items():
                block = decode(key, raw)
                assert isinstance(block, IdBlock)
                memory.load(key, block)
        elif kind == "record":
            calls, how = arg  # type: ignore[misc]
            if how == 1 and last is not None:
                events, levels, at, when = last  # the same record applied again
            else:
                offset += 1
                ingest += 20_000
                when = ingest - 5 * BUCKET_MS if how == 2 else ingest
                events = [ApiCall(id=f"e{n}", time_ms=0, app_id=app) for n, app, _ in calls]
                levels = [level for _, _, level in calls]
                at = offset
            got = memory.admit(events, levels, at, when)
            keys, fresh, duplicates = model.admit(events, levels, at, when)
            assert [key_of(e, lv) for e, lv in zip(got.events, got.levels, strict=True)] == keys
            assert {
                key_of(e, lv)
                for e, lv in zip(got.events, got.levels, strict=True)
                if id(e) in got.fresh
            } == fresh
            assert got.duplicates == duplicates
            last = (events, levels, at, when)
            if when > newest:  # the ledger forgets as its ingest time moves on
                newest = when
                memory.forget(when - horizon, state)
                model.forget(when - horizon)
        assert len(memory) == len(model.ids)


def test_a_block_written_before_ids_were_digested_still_loads() -> None:
    block = decode("d|0|5|4", ["d", 0, 5, {"a1|x": 3, "a1|y": 4, "a2|x|org": 3}])
    assert isinstance(block, IdBlock)
    memory = IdMemory(0)
    memory.load("d|0|5|4", block)
    assert all(k in memory for k in ("a1|x", "a1|y", "a2|x|org"))
    assert "a1|z" not in memory
    assert sorted(block.entries) == sorted(
        [(3, digest("a1|x") + digest("a2|x|org")), (4, digest("a1|y"))]
    )
    again = decode("d|0|5|4", block.encode())
    assert isinstance(again, IdBlock)
    assert again.entries == block.entries


def test_ids_are_let_go_when_forgotten_even_if_no_new_ones_come() -> None:
    """A burst, then silence: forgetting must release the burst's memory without waiting for a
    merge that new ids would trigger."""
    store = JsonStore()
    state, memory = WriteBackCache(store), IdMemory(0)
    t = 100 * BUCKET_MS
    for n in range(5):
        events = [ApiCall(id=f"e{n}-{i}", time_ms=0, app_id="a1") for i in range(1000)]
        memory.admit(events, None, n, t + n * 1000)
        memory.save(state, n)
    assert memory.stored() == 5000
    memory.forget(t + BUCKET_MS // 2, state)  # nothing past the horizon yet
    assert memory.stored() == 5000
    memory.forget(t + 2 * BUCKET_MS, state)  # the burst's bucket is forgotten
    assert memory.stored() == 0
    assert len(memory) == 0
    state.flush()
    assert not store.data  # and its blocks deleted


def test_a_record_applied_again_after_a_restart_is_known_as_its_own() -> None:
    """A crash after a flush's id blocks reached the store but before its meta key did: the
    record is applied again over the stored ids, which must carry its offset (its events are
    admitted again, none as fresh, none as repeats); another record's same ids are repeats."""
    store = JsonStore()
    state, memory = WriteBackCache(store), IdMemory(0)
    events = [ApiCall(id=f"e{i}", time_ms=0, app_id="a1") for i in range(3)]
    t = 100 * BUCKET_MS
    memory.admit(events, None, 7, t)
    memory.save(state, 7)
    state.flush()
    reloaded = IdMemory(0)
    for key, raw in store.items():
        block = decode(key, raw)
        assert isinstance(block, IdBlock)
        reloaded.load(key, block)
    again = reloaded.admit(events, None, 7, t)
    assert (again.events, again.fresh, again.duplicates) == (events, set(), 0)
    assert reloaded.admit(events, None, 8, t).duplicates == 3
