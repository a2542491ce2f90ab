"""Running `meter simulate`: settings, topic, generation (in a child process when possible),
producing, the truth file and the summary, which this module writes to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from meter.adapters.broker import kafka_bootstrap
from meter.adapters.policy_file import bundled_policy_path, read_policy
from meter.adapters.topics import TopicSpec, ensure_topics, settled_partition_counts
from meter.config import BOOTSTRAP, INPUT_TOPIC, POLICY, KafkaSecurity, default_state_dir
from meter.core.errors import ConfigError
from meter.core.windows import format_ms
from meter.sim import SimulationError
from meter.sim.framing import MAX_HOLD_MS
from meter.sim.pipeline import ChildPipeline, LocalPipeline, Pipeline, Plan, can_fork
from meter.sim.produce import Produced, drain, produce, producer_for
from meter.sim.progress import Progress
from meter.sim.scenario import DEFAULT_CALLS, ScenarioConfig
from meter.sim.truth import Truth, write_truth

log = logging.getLogger(__name__)

# The flag to name when ScenarioConfig refuses a value, by the start of its message.
_FLAGS = (
    ("the end", "--start / --end"),
    ("calls", "--calls / --scale"),
    ("mean records", "--mean-records"),
    ("late + disorder", "--late / --disorder"),
)


def _config(args: argparse.Namespace) -> ScenarioConfig:
    calls = args.calls
    if args.scale is not None:
        calls = ScenarioConfig.calls_for_scale(args.scale, args.start, args.end)
    try:
        return ScenarioConfig(
            seed=args.seed,
            start_ms=args.start,
            end_ms=args.end,
            calls=DEFAULT_CALLS if calls is None else calls,
            mean_records=args.mean_records,
            malformed=args.malformed,
            duplicates=args.duplicates,
            late=args.late,
            disorder=args.disorder,
            burst_share=args.bursts,
            unknown_share=args.unknown,
            restricted=args.restricted,
            flush=not args.no_flush,
        )
    except ValueError as exc:
        text = str(exc)
        flag = next((f for word, f in _FLAGS if text.startswith(word)), "meter simulate")
        raise ConfigError(flag, text) from exc


def run_simulate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """The `meter simulate` command; returns its exit code (errors raise `MeterError`s)."""
    flags: dict[str, object | None] = dict(vars(args))
    flags["input_topic"] = flags.pop("topic", None)  # `simulate --topic` is the input topic
    policy_path = POLICY.value(flags, env, {}) or str(bundled_policy_path())
    policy = read_policy(policy_path)
    topic = INPUT_TOPIC.value(flags, env, {})
    config = _config(args)
    if not 0 <= args.max_hold <= MAX_HOLD_MS or not 1 <= args.batch_size <= 10_000:
        raise ConfigError("--max-hold / --batch-size", "at most 40m, and 1 to 10,000 events")
    if args.partitions < 1:
        raise ConfigError("--partitions", "must be a positive integer")
    plan = Plan(
        policy_path=policy_path,
        config=config,
        fmt=args.format,
        key=args.key,
        batch_size=args.batch_size,
        max_hold_ms=args.max_hold,
        truth=not args.no_truth,
    )
    truth_path = Path(args.truth) if args.truth else default_state_dir(env) / "sim" / "truth.json"
    estimate = round(config.calls * (1 + 1.1 * config.duplicates + config.malformed))
    progress = Progress(estimate, sys.stderr, enabled=args.progress or sys.stderr.isatty())
    where = "(dry run)"
    producer: Any = None
    bootstrap: str | None = None
    security = KafkaSecurity.load(env)
    if not args.dry_run:
        bootstrap = kafka_bootstrap(BOOTSTRAP.value(flags, env, {}), env)
        try:
            ensure_topics(bootstrap, [TopicSpec(topic, args.partitions)], security=security)
            counts = settled_partition_counts(bootstrap, [topic], security=security)
            count = counts.get(topic, args.partitions)
        except KafkaError as exc:
            raise SimulationError(f"cannot prepare topic {topic} at {bootstrap}: {exc}") from exc
        where = f"to {topic} ({count} partition{'s' if count > 1 else ''}) at {bootstrap}"
    # A dry run has nothing to overlap generation with: a child would only add the pipe.
    inline = args.single_process or args.dry_run or not can_fork()
    pipeline: Pipeline = LocalPipeline(plan, policy) if inline else ChildPipeline(plan, policy)
    try:
        if bootstrap is None:
            produced = drain(pipeline.messages(), progress)
        else:
            try:
                producer = producer_for(bootstrap, security=security)
            except KafkaError as exc:
                raise SimulationError(f"cannot connect to Kafka at {bootstrap}: {exc}") from exc
            messages = pipeline.messages()
            produced = produce(messages, producer, topic, rate=args.rate, progress=progress)
    finally:
        pipeline.close()
        if producer is not None:
            producer.close()
    truth = pipeline.truth()
    if truth is not None:
        sent = truth.sent
        if (sent["events"], sent["malformed"]) != (produced.events, produced.malformed):
            raise SimulationError(
                f"the truth counts {sent['events']} events and {sent['malformed']} malformed "
                f"records, but {produced.events} and {produced.malformed} were sent"
            )
        sent["messages"] = produced.messages
        truth.scenario["topic"] = topic
        write_truth(truth, truth_path)
    sys.stdout.write(_summary(plan, produced, truth, truth_path, where))
    return 0


def _summary(
    plan: Plan, produced: Produced, truth: Truth | None, truth_path: Path, where: str
) -> str:
    cfg = plan.config
    lines = [
        f"meter simulate: {produced.events:,} events and {produced.malformed:,} malformed records "
        f"in {produced.messages:,} {plan.fmt} records {where}",
        f"  scenario: seed {cfg.seed}, {cfg.calls:,} calls from {format_ms(cfg.start_ms)} to "
        f"{format_ms(cfg.end_ms)}, policy {plan.policy_path}",
    ]
    if truth is not None:
        s = truth.sent
        mean = s["records"] / s["calls"] if s["calls"] else 0.0
        lines += [
            f"  sent: {s['events']:,} events = {s['calls']:,} calls + {s['duplicates']:,} "
            f"retries; {s['records']:,} records ({mean:.1f} per call); "
            f"{s['malformed']:,} malformed",
            f"        {s['late']:,} late, {s['out_of_order']:,} out of order, "
            f"{s['unknown_app_events']:,} by unknown apps, {s['restricted_events']:,} "
            f"restricted uses, {s['flush']:,} flush events",
        ]
        by_kind: dict[str, dict[str, int]] = {}
        for alert in truth.alerts:
            kind = by_kind.setdefault(alert.kind, {})
            kind[alert.severity] = kind.get(alert.severity, 0) + 1
        parts = [
            f"{kind} {sum(sev.values()):,} ("
            + ", ".join(f"{name} {n:,}" for name, n in sorted(sev.items()))
            + ")"
            for kind, sev in sorted(by_kind.items())
        ]
        lines += [
            f"  expected alerts: {len(truth.alerts):,}: " + ("; ".join(parts) or "none"),
            f"  expected windows: {len(truth.windows):,}; truth: {truth_path}",
        ]
    lines.append(
        f"  time: {produced.seconds:.1f} s, {produced.events_per_second:,.0f} events/s, "
        f"{produced.bytes / max(produced.seconds, 1e-9) / 1e6:.1f} MB/s"
    )
    return "\n".join(lines) + "\n"
