"""The 2022 case without a broker, for statement tests: the simulator's items through meter's own
ledger (one routed partition), its window records and alerts into an SQLite usage store in
batches, and the simulator's truth beside them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meter.adapters.store.database import Database, open_database
from meter.adapters.store.ingest import ALERTS, WINDOWS, apply_batch
from meter.adapters.store.records import Consumed
from meter.core.events import decode_record
from meter.core.ledger import Applied, LedgerSettings, PartitionLedger
from meter.core.outputs import ALERTS as ALERT_KIND
from meter.core.outputs import WINDOWS as WINDOW_KIND
from meter.core.policy import Policy, load_policy
from meter.sim.framing import frame
from meter.sim.scenario import Item, ScenarioConfig, generate
from meter.sim.truth import Truth, TruthBuilder

DEMO_POLICY = Path(__file__).resolve().parents[2] / "meter" / "examples" / "demo-2022.yaml"
YEAR_2022 = (1_640_995_200_000, 1_672_531_200_000)
WINDOWS_TOPIC = "usage-windows"
ALERTS_TOPIC = "usage-alerts"
KINDS = {WINDOWS_TOPIC: WINDOWS, ALERTS_TOPIC: ALERTS}
T_INGEST = 1_800_000_000_000
"""When the first batch is stored (ingest time, wall clock); each next one is a second later."""


class _DictStore:
    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}

    def get(self, key: str) -> list[Any] | None:
        return self.data.get(key)

    def put(self, key: str, value: list[Any]) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def run_ledger(
    items: Iterable[Any], policy: Policy, settings: LedgerSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Window records and alerts, in publishing order, of one worker with one input and one
    routed partition, reporting progress after each record and going idle at the end."""
    ledger = PartitionLedger(0, policy, settings, _DictStore())
    windows: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    offsets = iter(range(1 << 30))
    wm: int | None = None
    clock = 0

    def publish(applied: Applied) -> None:
        for pending in applied.outbox:
            kind = pending.record.kind
            if kind == ALERT_KIND:
                alerts.append(pending.record.value)
            elif kind == WINDOW_KIND:
                windows.append(pending.record.value)
        ledger.acknowledge(applied.outbox)

    for msg in frame(items, "batch", batch_size=50):
        decoded = decode_record(msg.value, msg.headers)
        publish(ledger.apply(next(offsets), decoded.events, 0, msg.send_ms))
        for ev in decoded.events:
            wm = max(wm or ev.time_ms, min(ev.time_ms, msg.send_ms))
        clock = max(clock, msg.send_ms)
        publish(ledger.report(next(offsets), 1, clock, {0: (wm, False)}, 0))
    publish(ledger.report(next(offsets), 1, clock + 10**12, {0: (wm, True)}, 0))
    return windows, alerts


@dataclass
class Case:
    policy: Policy
    truth: Truth
    items: list[Item]
    windows: list[dict[str, Any]]
    alerts: list[dict[str, Any]]


def demo_policy(*, tight: bool = False) -> Policy:
    """The demo's policy; `tight`: its monthly caps low enough for a few thousand calls to cross
    them (records 8,000 and calls 250 a month)."""
    text = DEMO_POLICY.read_text()
    if tight:
        text = text.replace("limit: 400000", "limit: 8000").replace("limit: 12000", "limit: 250")
    return load_policy(yaml.safe_load(text))


def case_2022(
    calls: int = 4000, seed: int = 2022, *, policy: Policy | None = None, **config: Any
) -> Case:
    """A year of the eight-app organisation (the demo policy), messier than the demo: late and
    compacted windows (a short late horizon), retries, restricted recipients, unknown apps."""
    policy = policy or demo_policy()
    cfg = ScenarioConfig(
        seed=seed,
        calls=calls,
        late=0.02,
        duplicates=0.03,
        restricted=0.01,
        unknown_share=0.01,
        **config,
    )
    items = list(generate(policy, cfg))
    truth = TruthBuilder(policy).add_all(items).build(cfg.to_json())
    windows, alerts = run_ledger(items, policy, LedgerSettings(late_horizon_ms=3_600_000))
    return Case(policy, truth, items, windows, alerts)


def store_records(
    db: Database,
    windows: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]] = (),
    *,
    batch: int = 2000,
    first_offset: int = 0,
    ingest_ms: int = T_INGEST,
) -> int:
    """Store the records as `meter store` would, in batches (each a second of ingest time
    after the last); the ingest time of the last batch."""
    consumed = [
        Consumed(WINDOWS_TOPIC, 0, first_offset + i, json.dumps(w).encode())
        for i, w in enumerate(windows)
    ]
    consumed += [
        Consumed(ALERTS_TOPIC, 0, first_offset + i, json.dumps(a).encode())
        for i, a in enumerate(alerts)
    ]
    now = ingest_ms
    for i in range(0, len(consumed), batch):
        apply_batch(db, consumed[i : i + batch], KINDS, now)
        now += 1000
    return now - 1000


def store_case(path: Path, case: Case) -> tuple[Database, int]:
    db = open_database(str(path))
    return db, store_records(db, case.windows, case.alerts)
