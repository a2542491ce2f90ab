"""Settings: frozen dataclasses read from CLI flags and an injectable environment (`METER_*`).

A flag wins over its environment variable, which wins over the default. A bad value raises
`ConfigError` naming the flag and the variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from meter.core.errors import ConfigError

T = TypeVar("T")

_REPO_ROOT = Path(__file__).resolve().parents[1]


def _pick(
    flags: Mapping[str, object | None],
    env: Mapping[str, str],
    name: str,
    var: str,
    default: T,
    convert: Callable[[str], T],
) -> T:
    """The value of setting `name`: flag `--name`, else `$var`, else `default`."""
    raw = flags.get(name)
    label = f"--{name.replace('_', '-')} / {var}"
    if raw is None:
        raw = env.get(var)
        if raw is None or raw == "":
            return default
    try:
        return convert(str(raw))
    except (ValueError, TypeError) as exc:
        raise ConfigError(label, f"invalid value {raw!r}: {exc}") from exc


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError("a port is between 1 and 65535")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Runtime files (broker data, worker state) live under `var/` in the checkout by default."""
    return Path(env.get("METER_STATE_DIR") or _REPO_ROOT / "var")


@dataclass(frozen=True)
class BrokerSettings:
    """Where the local development broker's Maven project is, where its data goes, its ports."""

    home: Path
    state: Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> BrokerSettings:
        home = _pick(
            flags, env, "kafka_home", "METER_KAFKA_HOME", _REPO_ROOT / "deploy/kafka", Path
        )
        state = default_state_dir(env) / "kafka"
        port = _pick(flags, env, "port", "METER_KAFKA_PORT", 9092, port_number)
        cport = _pick(
            flags, env, "controller_port", "METER_KAFKA_CONTROLLER_PORT", port + 1, port_number
        )
        if cport == port:
            raise ConfigError(
                "--controller-port / METER_KAFKA_CONTROLLER_PORT",
                f"must differ from the broker port {port}",
            )
        return cls(home=home, state=state, port=port, controller_port=cport)


@dataclass(frozen=True)
class KafkaSettings:
    """How workers and tools reach Kafka. An empty bootstrap means: use the local broker."""

    bootstrap: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> KafkaSettings:
        bootstrap = _pick(flags, env, "bootstrap", "METER_KAFKA_BOOTSTRAP", None, non_empty)
        return cls(bootstrap=bootstrap)
