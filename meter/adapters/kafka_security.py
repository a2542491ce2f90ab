"""The one place `KafkaSecurity` settings become client arguments: kafka-python, aiokafka and
faust each get theirs from here, so every client of a process connects the same way.

Plain settings give no arguments at all (`{}`): the clients keep their own defaults.
"""

from __future__ import annotations

import ssl
from typing import Any

from meter.config import KafkaSecurity

PLAINTEXT = KafkaSecurity()
"""No TLS, no SASL: what a client gets when nothing is configured."""


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """A client TLS context checking the broker's certificate and host name against the CA file
    (or the system's CAs); None without TLS."""
    if not security.tls:
        return None
    cafile = str(security.ca_file) if security.ca_file is not None else None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


def _common(security: KafkaSecurity) -> dict[str, Any]:
    if security.protocol == "PLAINTEXT":
        return {}
    args: dict[str, Any] = {"security_protocol": security.protocol}
    if security.sasl:
        args["sasl_mechanism"] = security.mechanism
        args["sasl_plain_username"] = security.username
        args["sasl_plain_password"] = security.password
    if security.tls:
        args["ssl_context"] = ssl_context(security)
    return args


def kafka_python_args(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for kafka-python's `KafkaConsumer`, `KafkaProducer`, `KafkaAdminClient`."""
    return _common(security)


def aiokafka_args(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for aiokafka's `AIOKafkaConsumer` and `AIOKafkaProducer`."""
    return _common(security)


def faust_args(security: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for `faust.App` (its consumer, producer and admin client)."""
    from faust.auth import SASLCredentials, SSLCredentials  # noqa: PLC0415 - faust is heavy

    context = ssl_context(security)
    if security.sasl:
        # SASLCredentials picks SASL_SSL when given a context, SASL_PLAINTEXT without one.
        credentials: Any = SASLCredentials(
            username=security.username,
            password=security.password,
            mechanism=security.mechanism,
            ssl_context=context,
        )
    elif context is not None:
        credentials = SSLCredentials(context)
    else:
        return {}
    return {"broker_credentials": credentials}


__all__ = ["PLAINTEXT", "aiokafka_args", "faust_args", "kafka_python_args", "ssl_context"]
