"""The `meter api` process: wait for Kafka, load the tokens, read the feed, serve until SIGTERM."""

from __future__ import annotations

import logging

from meter.adapters import coordinator_fix
from meter.adapters.api.auth import Tokens
from meter.adapters.api.context import Context
from meter.adapters.api.feed import FeedReader
from meter.adapters.api.history import StoreReader
from meter.adapters.api.server import run_until_signal
from meter.adapters.api.settings import TOKENS_FILE, ApiSettings
from meter.adapters.broker import wait_for_kafka
from meter.adapters.outages import collapsed_client_noise
from meter.adapters.report.service import Issuer
from meter.adapters.store.settings import redact_database
from meter.core.enforcement import FeedState
from meter.core.policy import Policy

log = logging.getLogger(__name__)


def run_api(
    settings: ApiSettings,
    policy: Policy,
    bootstrap: str,
    statements: Issuer | None = None,
    *,
    verbose: bool = False,
) -> int:
    tokens = None
    if settings.tokens_file is not None:
        tokens = Tokens.load(settings.tokens_file, TOKENS_FILE.label)
        log.info("api: %d bearer token(s) from %s", len(tokens), settings.tokens_file)
    else:
        log.warning(
            "api: no --tokens-file: anyone who reaches %s:%d reads every organisation's usage "
            "(allowed on loopback only)", settings.host, settings.port,
        )  # fmt: skip
    wait_for_kafka(bootstrap, settings.connect_timeout_ms / 1000)
    coordinator_fix.install()
    feed = FeedState()
    reader = FeedReader(
        bootstrap, settings.quota_topic, feed, "meter-api", security=settings.kafka_security,
        stall_timeout_s=settings.stall_timeout_ms / 1000,
        stall_exit_s=settings.stall_exit_ms / 1000,
    )  # fmt: skip
    store = StoreReader(settings.database)
    log.info(
        "api: quota feed %s on %s (%s), usage store %s", settings.quota_topic, bootstrap,
        settings.kafka_security.describe(), redact_database(settings.database),
    )  # fmt: skip
    try:
        ctx = Context(policy, feed, reader, tokens, store, statements=statements or Issuer())
        with collapsed_client_noise(reader.link, verbose=verbose):
            return run_until_signal(ctx, settings)
    finally:
        store.close()
