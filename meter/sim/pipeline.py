"""Scenario -> truth -> records, in this process or in a forked child process that streams the
records to the producing one (generation then runs on another core than the Kafka client).
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from meter.adapters.policy_file import read_policy
from meter.core.policy import Policy
from meter.sim import SimulationError
from meter.sim.framing import Message, frame
from meter.sim.scenario import Item, ScenarioConfig, generate
from meter.sim.truth import Truth, TruthBuilder

CHUNK = 512  # records per hand-over between the processes
_new = tuple.__new__


@dataclass(frozen=True)
class Plan:
    """Everything needed to rebuild the same records anywhere: the policy file and settings."""

    policy_path: str
    config: ScenarioConfig
    fmt: str = "batch"
    key: str = "app"
    batch_size: int = 100
    max_hold_ms: int = 300_000
    truth: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **self.config.to_json(),
            "policy": self.policy_path,
            "format": self.fmt,
            "key": self.key,
            "batch_size": self.batch_size,
            "max_hold_ms": self.max_hold_ms,
        }


def _observed(items: Iterable[Item], builder: TruthBuilder) -> Iterator[Item]:
    add = builder.add
    for item in items:
        add(item)
        yield item


class Pipeline:
    """Yields the records of a plan once; `truth` is ready after the last record."""

    def messages(self) -> Iterator[Message]:
        raise NotImplementedError

    def truth(self) -> Truth | None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop early (after an error elsewhere); nothing to do in-process."""


class LocalPipeline(Pipeline):
    """Everything in this process (tests, dry runs, one-core machines)."""

    def __init__(self, plan: Plan, policy: Policy | None = None) -> None:
        self.plan = plan
        self.policy = policy if policy is not None else read_policy(plan.policy_path)
        self.builder = TruthBuilder(self.policy) if plan.truth else None
        self.done = False

    def messages(self) -> Iterator[Message]:
        plan = self.plan
        items: Iterable[Item] = generate(self.policy, plan.config)
        if self.builder is not None:
            items = _observed(items, self.builder)
        yield from frame(
            items,
            plan.fmt,
            key=plan.key,
            batch_size=plan.batch_size,
            max_hold_ms=plan.max_hold_ms,
        )
        self.done = True

    def truth(self) -> Truth | None:
        if self.builder is None:
            return None
        if not self.done:
            raise SimulationError("the truth is only known once every record was made")
        return self.builder.build(self.plan.to_json())


def _child(plan: Plan, policy: Policy, conn: Connection) -> None:
    """The child process: stream chunks of records, then the truth as JSON (or an error)."""
    gc.disable()  # a short-lived process of acyclic data: collections only cost time here
    try:
        local = LocalPipeline(plan, policy)
        chunk: list[tuple[Any, ...]] = []
        for msg in local.messages():
            chunk.append(tuple(msg))  # plain tuples pickle several times faster
            if len(chunk) >= CHUNK:
                conn.send(("chunk", chunk))
                chunk = []
        if chunk:
            conn.send(("chunk", chunk))
        truth = local.truth()
        conn.send(("done", None if truth is None else truth.to_json()))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:  # reported to the parent, which fails the run with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


class ChildPipeline(Pipeline):
    """Generation, truth and framing in a forked child; records arrive through a pipe.

    Fork, not spawn: spawn re-imports the caller's main module, which breaks scripts without a
    main guard. Start it before any Kafka client, so no client thread is forked mid-work."""

    def __init__(self, plan: Plan, policy: Policy) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child_conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_child,
            args=(plan, policy, child_conn),
            name="meter-simulate-gen",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self._truth: dict[str, Any] | None = None
        self.done = False

    def messages(self) -> Iterator[Message]:
        while True:
            try:
                kind, payload = self.conn.recv()
            except EOFError:
                raise SimulationError("the generator process stopped unexpectedly") from None
            if kind == "chunk":
                for fields in payload:
                    yield _new(Message, fields)
            elif kind == "done":
                self._truth = payload
                self.done = True
                self.process.join(timeout=30)
                return
            else:
                raise SimulationError(f"the generator process failed: {payload}")

    def truth(self) -> Truth | None:
        if not self.done:
            raise SimulationError("the truth is only known once every record was made")
        return None if self._truth is None else Truth.from_json(self._truth)

    def close(self) -> None:
        self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
