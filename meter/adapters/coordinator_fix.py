"""A fix for aiokafka's group coordinator lookup while its metadata lists no broker.

aiokafka 0.14 looks the coordinator up through a random known broker and asserts that there is
one (`AssertionError('Did we not perform bootstrap?')`). A client whose bootstrap was answered
with an empty broker list (a broker that is starting, or resuming from a pause, can answer so)
hits that assertion; raised inside the consumer's coordination task, it ends the task for good,
and every later call of that consumer fails (`KafkaError: Unexpected error during coordination`):
a worker exited 70 that way when its broker was paused for 20 s. With the fix the lookup raises a
retriable `KafkaConnectionError` instead, which aiokafka answers with a metadata refresh, a
backoff and another lookup, as for any broker it cannot reach.
"""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError

_FIXED = "_meter_coordinator_fix"


def install() -> None:
    """Patch `AIOKafkaClient.coordinator_lookup` (once per process; later calls do nothing)."""
    original = AIOKafkaClient.coordinator_lookup
    if getattr(original, _FIXED, False):
        return

    async def coordinator_lookup(self: AIOKafkaClient, *args: Any, **kwargs: Any) -> Any:
        if self.get_random_node() is None:
            raise KafkaConnectionError("no broker known yet: the metadata listed none")
        return await original(self, *args, **kwargs)

    setattr(coordinator_lookup, _FIXED, True)
    AIOKafkaClient.coordinator_lookup = coordinator_lookup


__all__ = ["install"]
