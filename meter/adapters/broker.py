"""A local single-node Apache Kafka (KRaft) broker run from Maven Central jars, for dev and tests.

`LocalBroker` fetches the jars with Maven, formats storage once, starts the JVM in the background,
waits until the broker port accepts connections, and stops it with SIGTERM.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meter.config import BOOTSTRAP, Option, default_state_dir, load, port_number
from meter.core.errors import ConfigError, MeterError, UnavailableError

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]

STORAGE_PROPERTIES = """\
log.dirs={data_dir}
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
"""
"""Where data goes and the single-node settings of the internal topics, shared by the local
brokers (`meter kafka start`, with and without `--secure`)."""

_SERVER_PROPERTIES = (
    """\
# Written by `meter kafka start`; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""
    + STORAGE_PROPERTIES
    + "auto.create.topics.enable=true\n"
)


class BrokerError(MeterError):
    """The local broker could not be fetched, formatted, started or stopped."""


@dataclass(frozen=True)
class BrokerLayout:
    """Where the Maven project lives (`home`) and where data, logs and the pid file go (`state`);
    `load` reads it from `BROKER_OPTIONS`."""

    home: Path
    state: Path
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int = 9093

    @classmethod
    def load(cls, flags: Mapping[str, object | None], env: Mapping[str, str]) -> BrokerLayout:
        values = load(BROKER_OPTIONS, flags, env)
        if values["controller_port"] == values["port"]:
            raise ConfigError(
                BROKER_OPTIONS[1].label, f"must differ from the broker port {values['port']}"
            )
        return cls(state=default_state_dir(env) / "kafka", **values)

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    @property
    def log_dir(self) -> Path:
        return self.state / "logs"

    @property
    def pid_file(self) -> Path:
        return self.state / "broker.pid"

    @property
    def console_file(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def properties_file(self) -> Path:
        return self.state / "server.properties"


BROKER_OPTIONS: tuple[Option, ...] = (
    Option("--port", 9092, port_number, "broker port", "`9092`", var="METER_KAFKA_PORT"),
    Option(
        "--controller-port", lambda v, _: v["port"] + 1, port_number, "KRaft controller port",
        "broker port + 1", var="METER_KAFKA_CONTROLLER_PORT",
    ),
    Option(
        "--kafka-home", _REPO_ROOT / "deploy" / "kafka", Path, "the broker's Maven project",
        "`deploy/kafka`", field="home",
    ),
)  # fmt: skip
"""The local broker's settings (`meter kafka`); data, logs and pid file go in `var/kafka/`."""


def kafka_bootstrap(configured: str | None, env: Mapping[str, str]) -> str:
    """The configured bootstrap servers, or the local broker when it is running."""
    if configured:
        return configured
    local = BrokerLayout.load({}, env)
    if port_open(local.host, local.port):
        log.info("no Kafka configured: using the local broker at %s", local.bootstrap)
        return local.bootstrap
    raise ConfigError(
        BOOTSTRAP.label,
        f"no Kafka configured and no local broker at {local.bootstrap}; set it, or run "
        "`meter kafka start`",
    )


def wait_for_kafka(bootstrap: str, timeout_s: float, *, what: str = BOOTSTRAP.label) -> None:
    """Return once one of the bootstrap servers accepts a connection; after `timeout_s` raise
    `UnavailableError` with one line naming the cause and the fix. Logs one WARNING while it
    waits, so a worker started before its broker starts with it."""
    addresses: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        host, _, digits = item.strip().rpartition(":")
        if not host or not digits.isdigit():
            raise ConfigError(what, f"expected host:port[,host:port...], got {bootstrap!r}")
        addresses.append((host.strip("[]"), int(digits)))
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        cause = ""
        for address in addresses:
            try:
                with socket.create_connection(address, timeout=2.0):
                    return
            except OSError as exc:
                cause = exc.strerror or str(exc)
        if time.monotonic() >= deadline:
            raise UnavailableError(
                f"cannot reach Kafka at {bootstrap} ({cause.lower()}) after {timeout_s:.0f}s: "
                f"check {what}, or start a local broker with `meter kafka start`"
            )
        if not warned:
            log.warning(
                "Kafka at %s does not answer (%s); waiting up to %.0fs", bootstrap, cause, timeout_s
            )
            warned = True
        time.sleep(1.0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for local brokers and servers in tests and runs)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers signal 0; treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalBroker:
    """Lifecycle of one local broker described by a `BrokerLayout`."""

    def __init__(self, layout: BrokerLayout, *, java: str = "java", mvn: str = "mvn") -> None:
        self.layout = layout
        self.java = java
        self.mvn = mvn

    # -- jars ----------------------------------------------------------------------------------
    def jars_present(self) -> bool:
        return self.layout.lib.is_dir() and any(self.layout.lib.glob("kafka_2.13-*.jar"))

    def fetch(self) -> None:
        """Copy the broker's runtime jars from Maven Central (or ~/.m2) into `home/lib`."""
        pom = self.layout.home / "pom.xml"
        if not pom.is_file():
            raise BrokerError(f"no Maven project at {pom}")
        cmd = [
            self.mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={self.layout.lib}",
            "-DincludeScope=runtime",
        ]
        log.info("fetching Kafka jars: %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise BrokerError(f"Maven ({self.mvn}) is not installed") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise BrokerError(f"Maven failed to fetch the Kafka jars:\n{tail}")

    # -- state ---------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The broker's pid if our pid file names a live process."""
        try:
            pid = int(self.layout.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def ready(self) -> bool:
        return self.running() and port_open(self.layout.host, self.layout.port)

    def _write_properties(self) -> None:
        lay = self.layout
        lay.state.mkdir(parents=True, exist_ok=True)
        lay.properties_file.write_text(
            _SERVER_PROPERTIES.format(
                host=lay.host,
                port=lay.port,
                controller_port=lay.controller_port,
                data_dir=lay.data_dir,
            )
        )

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [
            self.java,
            "-Xms256m",
            "-Xmx512m",
            f"-Dkafka.logs.dir={self.layout.log_dir}",
            f"-Dlog4j2.configurationFile={self.layout.home / 'log4j2.properties'}",
            "-cp",
            f"{self.layout.lib}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        """Format the data dir once (a formatted one is left alone)."""
        if (self.layout.data_dir / "meta.properties").is_file():
            return
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = self._java_cmd(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self._format_cluster_id(),
            "-c",
            str(self.layout.properties_file),
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting {self._name()} failed:\n{done.stdout}{done.stderr}".rstrip()
            )

    def _format_cluster_id(self) -> str:
        return _cluster_id()

    def _name(self) -> str:
        return "storage"

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> bool:
        """Start the broker and wait until it accepts connections.

        Returns False when it was already running. Raises `BrokerError` with the broker's own
        error lines when it exits or does not open its port in time.
        """
        if self.running():
            return False
        lay = self.layout
        if port_open(lay.host, lay.port):
            raise BrokerError(
                f"{lay.bootstrap} is already in use by another process; choose another port "
                "(--port / METER_KAFKA_PORT) or point METER_KAFKA_BOOTSTRAP at that broker"
            )
        if not self.jars_present():
            self.fetch()
        self._write_properties()
        self._format()
        lay.log_dir.mkdir(parents=True, exist_ok=True)
        with lay.console_file.open("wb") as console:  # fresh: error_lines() reads this run only
            proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(lay.properties_file)),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        lay.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                lay.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"the broker exited with status {proc.returncode} during start-up:\n"
                    + self.error_lines()
                )
            if port_open(lay.host, lay.port):
                return True
            time.sleep(0.2)
        self.stop()
        raise BrokerError(
            f"the broker did not accept connections on {lay.bootstrap} within {timeout:.0f}s:\n"
            + self.error_lines()
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after `timeout`). False if not running."""
        pid = self.pid()
        if pid is None:
            self.layout.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if _pid_alive(pid):
            log.warning("broker %d did not stop within %.0fs; killing it", pid, timeout)
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.layout.pid_file.unlink(missing_ok=True)
        return True

    def error_lines(self, limit: int = 25) -> str:
        """The broker's own ERROR/FATAL/Exception lines from its console log, newest last."""
        try:
            lines = self.layout.console_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no broker output)"
        picked = [
            ln
            for ln in lines
            if " ERROR " in ln or " FATAL " in ln or "Exception" in ln or "Error:" in ln
        ]
        return "\n".join((picked or lines)[-limit:]) or "(no broker output)"
