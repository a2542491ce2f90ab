"""What the command line's logging shows: meter's INFO lines, the client libraries' warnings, but
not kafka-python's diagnostic of its own slow loop steps (unless `-v`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from meter.cli import CLIENT_LOGGERS, configure_logging

SLOW = (
    "Task <kafka.net.selector.Task object at 0x7f> ran for 0.158s (>0.100s threshold). It is "
    "blocking the event loop -- likely a tight sync loop inside a coroutine. Other pollers will "
    "time out."
)


@pytest.fixture
def selector_log() -> Iterator[logging.Logger]:
    """kafka-python's selector logger; the logging state `configure_logging` changes is put back."""
    log = logging.getLogger("kafka.net.selector")
    filters = list(log.filters)
    levels = {name: logging.getLogger(name).level for name in CLIENT_LOGGERS}
    yield log
    log.filters[:] = filters
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_the_slow_loop_diagnostic_is_hidden_and_other_warnings_shown(
    selector_log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging(verbose=False)
    with caplog.at_level(logging.WARNING, logger="kafka.net.selector"):
        selector_log.warning(SLOW)
        selector_log.warning("Wakeup socket returned empty. Rebuilding.")
    assert [r.getMessage() for r in caplog.records] == ["Wakeup socket returned empty. Rebuilding."]


def test_verbose_shows_it(selector_log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    configure_logging(verbose=True)
    with caplog.at_level(logging.WARNING, logger="kafka.net.selector"):
        selector_log.warning(SLOW)
    assert [r.getMessage() for r in caplog.records] == [SLOW]
