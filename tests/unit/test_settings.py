"""Every setting is declared once: the loaders, the command line and the README's tables derive
from the declarations, their documented defaults are their real defaults, and the settings
objects' copies of those defaults (the core's too) equal them."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from meter.adapters.api.settings import API_OPTIONS, ApiSettings
from meter.adapters.broker import BROKER_OPTIONS, BrokerLayout
from meter.adapters.report.settings import REPORT_OPTIONS, STATEMENT_OPTIONS, ReportSettings
from meter.adapters.sinks.settings import SINK_OPTIONS, SinkSettings
from meter.adapters.store.settings import STORE_OPTIONS, StoreSettings
from meter.cli import build_parser
from meter.config import (
    KAFKA_SECURITY_OPTIONS,
    KafkaSecurity,
    Option,
    markdown_table,
    variables_table,
)
from meter.core.errors import ConfigError
from meter.core.ledger import LedgerSettings
from meter.core.statement import Rules
from meter.worker_settings import WORKER_OPTIONS, WorkerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
GROUPS = {
    "worker": WORKER_OPTIONS,
    "sinks": SINK_OPTIONS,
    "kafka": BROKER_OPTIONS,
    "store": STORE_OPTIONS,
    "api": API_OPTIONS,
    "report": REPORT_OPTIONS,
    "statements": STATEMENT_OPTIONS,
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_the_readme_shows_the_generated_table(group: str) -> None:
    table = markdown_table(GROUPS[group])
    assert table in README, f"regenerate with `meter settings`:\n{table}"


def test_the_readme_shows_the_kafka_security_variables() -> None:
    table = variables_table(KAFKA_SECURITY_OPTIONS)
    assert table in README, f"regenerate with `meter settings`:\n{table}"


@pytest.mark.parametrize(
    "option",
    [o for group in GROUPS.values() for o in group] + list(KAFKA_SECURITY_OPTIONS),
    ids=lambda o: o.flag or o.var,
)
def test_a_documented_default_is_the_real_default(option: Option) -> None:
    shown = option.shown.strip("`")
    if callable(option.default) or option.default is None or " " in shown or "<" in shown:
        return  # derived from other settings, or off: said in words
    if isinstance(option.default, Path):
        assert str(option.default).endswith(shown)
    else:
        assert option.parse(shown) == option.default


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


SETTINGS_OBJECTS: list[tuple[type, tuple[Option, ...]]] = [
    (WorkerSettings, WORKER_OPTIONS),
    (SinkSettings, SINK_OPTIONS),
    (StoreSettings, STORE_OPTIONS),
    (ApiSettings, API_OPTIONS),
    (BrokerLayout, BROKER_OPTIONS),
    (KafkaSecurity, KAFKA_SECURITY_OPTIONS),
    (LedgerSettings, WORKER_OPTIONS),  # the core cannot import the options: it repeats them
    (Rules, WORKER_OPTIONS),
]


@pytest.mark.parametrize(
    ("cls", "option"),
    [
        pytest.param(cls, o, id=f"{cls.__name__}.{o.field}")
        for cls, options in SETTINGS_OBJECTS
        for o in options
        if not callable(o.default) and o.field in _field_defaults(cls)
    ],
)
def test_a_settings_object_defaults_to_its_options_default(cls: type, option: Option) -> None:
    """A settings dataclass repeats its options' defaults (so it can be built without loading);
    the copies never drift from the declarations."""
    assert _field_defaults(cls)[option.field] == option.default


def test_every_option_is_a_flag_of_its_command_that_names_its_variable() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, options in (
        ("worker", WORKER_OPTIONS + SINK_OPTIONS),
        ("kafka", BROKER_OPTIONS),
        ("store", STORE_OPTIONS),
        ("api", API_OPTIONS),
    ):
        text = " ".join(sub.choices[command].format_help().split())
        for o in options:
            assert o.flag in text, (command, o.flag)
            assert o.var in text, (command, o.var)
    flags = [o.flag for o in WORKER_OPTIONS + SINK_OPTIONS]
    assert len(flags) == len(set(flags))
    args = parser.parse_args(["worker", "--grace", "2m", "--policy", "p.yaml"])
    assert WorkerSettings.load(vars(args), {}).grace_ms == 120_000


def test_a_bad_value_names_the_flag_and_the_variable() -> None:
    with pytest.raises(ConfigError) as bad:
        WorkerSettings.load({"grace": "soon"}, {"METER_POLICY": "p"})
    assert bad.value.field == "--grace / METER_GRACE"
    assert "invalid value 'soon'" in str(bad.value)
    with pytest.raises(ConfigError) as secret:
        WorkerSettings.load({}, {"METER_POLICY": "p", "METER_PARTITIONS": "-1"})
    assert secret.value.field == "--partitions / METER_PARTITIONS"


def test_a_secret_is_never_echoed_in_an_error() -> None:
    from meter.adapters.sinks.settings import SinkSettings  # noqa: PLC0415

    with pytest.raises(ConfigError) as bad:
        SinkSettings.load({}, {"METER_WEBHOOK_SECRET": "   "})
    assert "***" in str(bad.value)


@pytest.mark.parametrize(
    ("loader", "whose"),
    [
        (WorkerSettings.load, ""),
        (ApiSettings.load, " (the same as the workers')"),
        (ReportSettings.load, " (the workers' policy)"),
    ],
    ids=["worker", "api", "report"],
)
def test_every_command_that_reads_the_policy_requires_it_by_name(loader: Any, whose: str) -> None:
    with pytest.raises(ConfigError) as missing:
        loader({}, {})
    assert missing.value.field == "--policy / METER_POLICY"
    assert str(missing.value).endswith(f"a policy file is required{whose}")
    assert loader({"policy": "p.yaml"}, {}).policy == Path("p.yaml")
