"""The worker's faust app is wired the way exactness needs (no broker: nothing is started)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from meter.adapters.policy_file import read_policy
from meter.adapters.telemetry import Telemetry
from meter.adapters.worker import MeterWorker
from meter.config import WorkerSettings

EXAMPLE = Path(__file__).parents[2] / "meter" / "examples" / "demo-2022.yaml"


def test_the_producer_is_idempotent_so_a_retried_send_is_not_written_twice(
    tmp_path: Path,
) -> None:
    policy = read_policy(EXAMPLE)
    settings = WorkerSettings(policy=EXAMPLE, bootstrap="127.0.0.1:1", data_dir=tmp_path)
    worker = MeterWorker(
        settings, policy, "127.0.0.1:1", Telemetry(CollectorRegistry(), policy, 10)
    )

    async def build() -> object:
        return worker.app.producer._new_producer()

    client = asyncio.run(build())
    # aiokafka keeps a transaction manager (producer id and sequence numbers) only when
    # idempotence is on; acks must then be "all".
    assert client._txn_manager is not None  # type: ignore[attr-defined]
    assert client._sender._acks == -1  # type: ignore[attr-defined]
