"""The error tree of the core. Every error the meter raises descends from `MeterError`.

    MeterError
     +-- EventError        an input record or event is malformed (carries a short `reason` code)
     +-- PolicyError       the policy document is invalid (carries the field `path`)
     +-- ConfigError       a setting is invalid (carries the setting's `field` name)
     +-- UnavailableError  a service the command needs (Kafka) does not answer

A cap being crossed is not an error: it is a value returned by the usage ledger.
"""

from __future__ import annotations


class MeterError(Exception):
    """Root of every error the meter raises on purpose."""


class EventError(MeterError):
    """A record or event cannot be counted; `reason` is a stable, short, machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PolicyError(MeterError):
    """The policy document is invalid at `path` (e.g. ``apps.xbox-one-social.org``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ConfigError(MeterError):
    """A setting is invalid; `field` names the flag or environment variable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnavailableError(MeterError):
    """A service the command needs (Kafka, a database) did not answer in time."""
