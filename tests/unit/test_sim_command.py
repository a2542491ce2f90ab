"""`meter simulate` without a broker: the command's dry run, both pipelines, the producer loop
(against a fake producer) and the progress bar."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.core.errors import ConfigError
from meter.sim import SimulationError
from meter.sim.command import add_simulate_parser
from meter.sim.framing import Message
from meter.sim.pipeline import ChildPipeline, LocalPipeline, Plan, can_fork
from meter.sim.produce import produce
from meter.sim.progress import Progress
from meter.sim.scenario import ScenarioConfig
from meter.sim.truth import load_truth

MARCH = 1_646_092_800_000  # 2022-03-01T00:00:00Z
SMALL = ScenarioConfig(calls=3_000, start_ms=MARCH, end_ms=MARCH + 10 * 86_400_000)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meter")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["simulate", *argv])


def run(env: dict[str, str], *argv: str) -> int:
    args = parse(*argv)
    code: int = args.handler(args, env)
    return code


def test_a_dry_run_writes_the_truth_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"METER_STATE_DIR": str(tmp_path)}
    argv = ("--dry-run", "--calls", "3000", "--start", "2022-03-01", "--end", "2022-03-11")
    assert run(env, *argv) == 0
    out = capsys.readouterr().out
    truth = load_truth(tmp_path / "sim" / "truth.json")
    sent = truth.sent
    assert sent["calls"] == 3000 + sent["flush"]
    assert sent["messages"] > 0
    assert truth.scenario["format"] == "batch"
    assert truth.scenario["start_ms"] == MARCH
    assert out.startswith(
        f"meter simulate: {sent['events']:,} events and {sent['malformed']:,} malformed records "
        f"in {sent['messages']:,} batch records (dry run)\n"
    )
    assert f"expected windows: {len(truth.windows):,}" in out
    assert "expected alerts:" in out
    assert "events/s" in out


def test_a_dry_run_without_truth_still_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"METER_STATE_DIR": str(tmp_path)}
    assert run(env, "--dry-run", "--no-truth", "--scale", "0.0001", "--format", "json") == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "sim" / "truth.json").exists()
    assert "json records (dry run)" in out
    assert "78,000 calls from 2022-01-01T00:00:00Z to 2023-01-01T00:00:00Z" in out


def test_bad_settings_are_configuration_errors(tmp_path: Path) -> None:
    env = {"METER_STATE_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"^--mean-records: mean records .* between 0 and 97\.5"):
        run(env, "--dry-run", "--mean-records", "99")
    with pytest.raises(ConfigError, match=r"^--start / --end: the end must be after the start"):
        run(env, "--dry-run", "--start", "2023-01-01", "--end", "2022-01-01")
    with pytest.raises(ConfigError, match=r"^--late / --disorder: late [+] disorder must be <= 1"):
        run(env, "--dry-run", "--late", "0.6", "--disorder", "0.6")
    with pytest.raises(ConfigError, match=r"^--calls / --scale: calls must be >= 0"):
        run(env, "--dry-run", "--calls", "-5")
    with pytest.raises(SystemExit):
        parse("--calls", "10", "--scale", "0.1")
    with pytest.raises(SystemExit):
        parse("--late", "2")
    with pytest.raises(SystemExit):
        parse("--start", "yesterday")


def test_the_start_and_end_take_dates_date_times_and_epoch_ms() -> None:
    args = parse("--start", "2022-03-01T00:00:00Z", "--end", str(MARCH + 1))
    assert (args.start, args.end) == (MARCH, MARCH + 1)
    assert parse("--start", "2022-03-01").start == MARCH


@pytest.mark.skipif(not can_fork(), reason="needs fork")
def test_the_child_process_makes_the_same_records_and_truth() -> None:
    policy = read_policy(bundled_policy_path())
    plan = Plan(str(bundled_policy_path()), SMALL, fmt="cloudevents-binary")
    local = LocalPipeline(plan, policy)
    child = ChildPipeline(plan, policy)
    try:
        assert list(child.messages()) == list(local.messages())
    finally:
        child.close()
    assert child.truth() == local.truth()


@pytest.mark.skipif(not can_fork(), reason="needs fork")
def test_a_failing_child_fails_the_run() -> None:
    policy = read_policy(bundled_policy_path())
    child = ChildPipeline(Plan("x", SMALL, fmt="avro"), policy)
    try:
        with pytest.raises(SimulationError, match="generator process failed: ValueError: format"):
            list(child.messages())
    finally:
        child.close()


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_errback(self, callback: Any) -> None:
        if self.error is not None:
            callback(self.error)


class FakeProducer:
    def __init__(self, fail_at: int | None = None) -> None:
        self.log: list[Any] = []
        self.fail_at = fail_at

    def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> FakeFuture:
        self.log.append((topic, value, key, headers))
        failed = self.fail_at is not None and len(self.log) > self.fail_at
        return FakeFuture(RuntimeError("broker says no") if failed else None)

    def flush(self, timeout: float) -> None:
        self.log.append("flush")


def messages(n: int, barrier_at: int | None = None) -> list[Message]:
    return [
        Message(b"k", b"[%d]" % i, [("h", b"v")] if i % 2 else [], 10, i % 3 == 0, i == barrier_at)
        for i in range(n)
    ]


def test_produce_sends_in_order_and_flushes_before_the_barrier() -> None:
    producer = FakeProducer()
    out = produce(messages(5, barrier_at=3), producer, "t")
    sent = [entry for entry in producer.log if entry != "flush"]
    assert [v for _, v, _, _ in sent] == [b"[0]", b"[1]", b"[2]", b"[3]", b"[4]"]
    assert producer.log.index("flush") == 3  # everything before the barrier acknowledged first
    assert sent[0][3] is None
    assert sent[1][3] == [("h", b"v")]
    assert (out.messages, out.events, out.malformed, out.bytes) == (5, 50, 2, 15)


def test_produce_fails_when_a_send_fails() -> None:
    with pytest.raises(SimulationError, match=r"1 record\(s\) could not be sent; first: Runtime"):
        produce(messages(10), FakeProducer(fail_at=4), "t")


def test_produce_paces_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    out = produce(messages(20), FakeProducer(), "t", rate=100.0, clock=lambda: now[0], sleep=sleep)
    # 20 records of 10 events (7 with a malformed one as well) at 100/s: 2.07 s in all.
    assert now[0] == pytest.approx((200 + 7) / 100)
    assert out.events_per_second == pytest.approx(100.0)
    assert len(slept) == 20


def test_the_progress_bar_draws_only_when_enabled_and_throttles() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = Progress(1000, stream, enabled=True, interval=1.0, clock=lambda: now[0])
    for done in range(0, 1000, 100):
        now[0] += 0.25
        bar.update(done)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 4  # at 0.25 s, 1.25 s, 2.25 s and the final draw
    assert text.endswith("\r[" + "#" * 21 + "...]  90% 900 events 360/s 0s left  \n")
    quiet = io.StringIO()
    off = Progress(1000, quiet, enabled=False)
    off.update(500)
    off.close()
    assert quiet.getvalue() == ""
