"""Kafka outages as one process sees them: a probe asks Kafka for its metadata every few seconds,
the process logs one line when Kafka stops answering and one when it is back, and the client
libraries' per-attempt error lines (thousands in one broker restart) are counted, not printed.

- `KafkaLink`: the state (answering or not, since when, why), its log lines and its metrics
  (`meter_kafka_up`, `meter_kafka_outages_total`, `meter_kafka_unreachable_seconds`,
  `meter_kafka_client_errors_total`).
- `probe`: the asyncio task feeding it; `start_probe_thread` runs it for a process without an
  event loop (`meter store`).
- `ClientNoise`: a logging filter. While Kafka does not answer, the clients' WARNING and ERROR
  lines are counted and dropped; while it does, each kind of line is shown at most once a minute
  (a partial outage, such as one broker of three down, keeps the clients complaining while the
  probe is answered). `-v` shows every line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 5.0
REMIND_EVERY_S = 300.0
"""While Kafka stays unreachable, one reminder line this often."""
SHOW_EVERY_S = 60.0
"""While Kafka answers, each kind of client error line is shown at most this often."""
CLIENT_LOGGERS = ("aiokafka", "kafka", "faust.transport")
"""Loggers of the Kafka clients (faust's transport: its producer's "buffer full" line comes at
every flush while a broker fails over)."""


def _clock_text(wall_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall_s))


class KafkaLink:
    """Whether Kafka answers this process, with one log line per change of state.

    `answered` and `failed` come from the probe; `client_line` from `ClientNoise`. Thread-safe:
    the store runs the probe in a thread of its own."""

    def __init__(
        self,
        bootstrap: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap
        self.clock = clock
        self.wall = wall
        self.up: bool | None = None
        """None until the first probe."""
        self.cause = ""
        self.down_since: float | None = None
        self.down_since_wall = 0.0
        self.outages = 0
        self.client_errors = 0
        self.suppressed = 0
        self._reminded = 0.0
        self._shown: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- from the probe ------------------------------------------------------------------------
    def answered(self, brokers: int) -> None:
        with self._lock:
            if self.up is False and self.down_since is not None:
                log.warning(
                    "Kafka at %s answers again after %.0fs unreachable (%d broker(s) listed; %d "
                    "client error line(s) counted meanwhile, not shown)",
                    self.bootstrap, self.clock() - self.down_since, brokers, self.suppressed,
                )  # fmt: skip
            elif self.up is None:
                log.info("Kafka at %s answers (%d broker(s) listed)", self.bootstrap, brokers)
            self.up = True
            self.down_since = None
            self.suppressed = 0

    def failed(self, cause: str) -> None:
        with self._lock:
            now = self.clock()
            self.cause = cause
            if self.up is not False:
                self.up = False
                self.outages += 1
                self.down_since = now
                self.down_since_wall = self.wall()
                self._reminded = now
                log.warning(
                    "Kafka at %s unreachable since %s (%s); retrying every %.0fs; the clients' "
                    "own error lines are counted, not shown (-v shows them)",
                    self.bootstrap, _clock_text(self.down_since_wall), cause, PROBE_INTERVAL_S,
                )  # fmt: skip
            elif self.down_since is not None and now - self._reminded >= REMIND_EVERY_S:
                self._reminded = now
                log.warning(
                    "Kafka at %s still unreachable, for %.0fs now (%s); retrying",
                    self.bootstrap, now - self.down_since, cause,
                )  # fmt: skip

    # -- from the client libraries' log lines --------------------------------------------------
    def client_line(self, kind: str) -> bool:
        """A client library logged a WARNING or ERROR line of `kind`: whether to show it."""
        with self._lock:
            self.client_errors += 1
            now = self.clock()
            if self.up is False:
                self.suppressed += 1
                return False
            last = self._shown.get(kind)
            if last is not None and now - last < SHOW_EVERY_S:
                self.suppressed += 1
                return False
            self._shown[kind] = now
            return True

    # -- what others see -----------------------------------------------------------------------
    def unreachable_s(self) -> float:
        """How long Kafka has not answered (0 while it does)."""
        since = self.down_since
        return 0.0 if since is None or self.up is not False else self.clock() - since

    def problem(self) -> str | None:
        """For readiness checks: why Kafka is not usable now, or None."""
        if self.up is False and self.down_since is not None:
            return (
                f"Kafka unreachable since {_clock_text(self.down_since_wall)} "
                f"({self.unreachable_s():.0f}s: {self.cause})"
            )
        if self.up is None:
            return "Kafka not probed yet"
        return None


class LinkCollector(Collector):
    """The link's state as metrics, read at scrape time."""

    def __init__(self, link: KafkaLink) -> None:
        self.link = link

    def collect(self) -> Iterator[Metric]:
        link = self.link
        up = GaugeMetricFamily("meter_kafka_up", "1 while Kafka answers this process's probe")
        up.add_metric([], 1.0 if link.up else 0.0)
        yield up
        down = GaugeMetricFamily(
            "meter_kafka_unreachable_seconds", "How long Kafka has not answered (0 while it does)"
        )
        down.add_metric([], link.unreachable_s())
        yield down
        outages = CounterMetricFamily(
            "meter_kafka_outages", "Times Kafka stopped answering this process's probe"
        )
        outages.add_metric([], link.outages)
        yield outages
        errors = CounterMetricFamily(
            "meter_kafka_client_errors",
            "WARNING and ERROR lines of the Kafka client libraries (shown or not)",
        )
        errors.add_metric([], link.client_errors)
        yield errors


# -- the probe ---------------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_S:.0f}s"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


async def probe(
    link: KafkaLink,
    bootstrap: str,
    client_args: Mapping[str, Any],
    interval_s: float = PROBE_INTERVAL_S,
) -> None:
    """Ask Kafka for its metadata every `interval_s`, forever, and tell `link` what happened.
    A metadata answer listing no broker (a broker still starting) counts as no answer."""
    client: AIOKafkaClient | None = None
    try:
        while True:
            try:
                if client is None:
                    client = AIOKafkaClient(
                        bootstrap_servers=bootstrap,
                        client_id="meter-probe",
                        request_timeout_ms=int(PROBE_TIMEOUT_S * 1000),
                        **client_args,
                    )
                    await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT_S * 2)
                metadata = await asyncio.wait_for(client.fetch_all_metadata(), PROBE_TIMEOUT_S)
                brokers = len(metadata.brokers())
                if not brokers:
                    raise KafkaError("the metadata lists no broker yet")
                link.answered(brokers)
            except (KafkaError, OSError, TimeoutError) as exc:
                link.failed(_describe(exc))
                if client is not None and not client.cluster.brokers():
                    await _close(client)
                    client = None
            await asyncio.sleep(interval_s)
    finally:
        if client is not None:
            await _close(client)


async def _close(client: AIOKafkaClient) -> None:
    with contextlib.suppress(Exception):
        await client.close()


def start_probe_thread(
    link: KafkaLink, bootstrap: str, client_args: Mapping[str, Any]
) -> threading.Thread:
    """Run `probe` in a daemon thread with its own event loop (for `meter store`)."""
    thread = threading.Thread(
        target=lambda: asyncio.run(probe(link, bootstrap, client_args)),
        name="kafka-probe",
        daemon=True,
    )
    thread.start()
    return thread


# -- the clients' log lines --------------------------------------------------------------------
_DIGITS = re.compile(r"\d+")


class ClientNoise(logging.Filter):
    """Drops the Kafka clients' WARNING and ERROR lines while Kafka does not answer, and shows
    each kind at most once a minute while it does (`KafkaLink.client_line` decides and counts)."""

    def __init__(self, link: KafkaLink) -> None:
        super().__init__()
        self.link = link

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        name = record.name
        if not any(name == c or name.startswith(c + ".") for c in CLIENT_LOGGERS):
            return True
        kind = name + ":" + _DIGITS.sub("N", str(record.msg))[:60]
        return self.link.client_line(kind)


@contextlib.contextmanager
def collapsed_client_noise(link: KafkaLink, *, verbose: bool) -> Iterator[None]:
    """While inside: `ClientNoise` on every handler of the root logger (not with `verbose`:
    `-v` shows every line)."""
    if verbose:
        yield
        return
    noise = ClientNoise(link)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(noise)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(noise)


__all__ = [
    "ClientNoise",
    "KafkaLink",
    "LinkCollector",
    "collapsed_client_noise",
    "probe",
    "start_probe_thread",
]
