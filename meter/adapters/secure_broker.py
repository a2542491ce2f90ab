"""`meter kafka start --secure`: the local broker with TLS, SASL/SCRAM-SHA-512 and ACLs.

It lives in its own state dir (`var/kafka-secure/`): SCRAM users exist only if they are created
when the storage is formatted, and a formatted dir is never formatted again, so a secure broker
never reuses a plain broker's data. At the first start it makes a CA and a broker certificate,
one password per user (files of mode 0600, never on a command line), and formats with the
users; at every start it grants the ACLs (`acl_bindings`).
"""

from __future__ import annotations

import base64
import logging
import secrets
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from meter.adapters.broker import STORAGE_PROPERTIES, BrokerError, BrokerLayout, LocalBroker
from meter.adapters.certificates import private_dir, write_broker_certificates, write_private
from meter.adapters.kafka_security import kafka_python_args
from meter.config import KafkaSecurity, default_state_dir, load
from meter.worker_settings import WORKER_OPTIONS

log = logging.getLogger(__name__)

ADMIN = "admin"
"""The broker's own user (inter-broker and controller traffic, granting ACLs): a super user."""
METER = "meter"
"""meter's processes: worker, sinks, store, API (`acl_bindings`)."""
PRODUCER = "producer"
"""Gateways: write to the input topic, nothing else."""
USERS = (ADMIN, METER, PRODUCER)
MECHANISM = "SCRAM-SHA-512"

_SECURE_PROPERTIES = (
    """\
# Written by `meter kafka start --secure`; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=SASL_SSL://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=SASL_SSL://{host}:{port}
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={mechanism}
sasl.mechanism.inter.broker.protocol={mechanism}
listener.name.sasl_ssl.sasl.enabled.mechanisms={mechanism}
listener.name.sasl_ssl.{mechanism_lower}.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{admin}" password="{admin_password}";
# The controller listener cannot use SCRAM (controllers read SCRAM users from the metadata they
# serve), so it uses PLAIN with the admin user only: no anonymous super user.
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="{admin}" password="{admin_password}" user_{admin}="{admin_password}";
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca_cert}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{admin}
allow.everyone.if.no.acl.found=false
"""
    + STORAGE_PROPERTIES
    + "auto.create.topics.enable=false\n"
)


def secure_layout(flags: Mapping[str, object | None], env: Mapping[str, str]) -> BrokerLayout:
    """The `meter kafka` settings, with the state in `var/kafka-secure/` instead of `var/kafka/`."""
    return replace(BrokerLayout.load(flags, env), state=default_state_dir(env) / "kafka-secure")


@dataclass(frozen=True)
class AclNames:
    """The topics and group the ACLs name: the workers' (`METER_INPUT_TOPIC`, `METER_GROUP`...,
    or their defaults)."""

    input_topic: str = "api-calls"
    dlq_topic: str = "api-calls.dlq"
    alerts_topic: str = "usage-alerts"
    windows_topic: str = "usage-windows"
    quota_topic: str = "quota-state"
    group: str = "meter"

    @classmethod
    def load(cls, env: Mapping[str, str]) -> AclNames:
        values = load(WORKER_OPTIONS, {}, env)
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


class SecureBroker(LocalBroker):
    """A `LocalBroker` whose only client listener is SASL_SSL, with users and ACLs."""

    def __init__(
        self, layout: BrokerLayout, names: AclNames, *, java: str = "java", mvn: str = "mvn"
    ) -> None:
        super().__init__(layout, java=java, mvn=mvn)
        self.names = names

    # -- files ---------------------------------------------------------------------------------
    @property
    def tls_dir(self) -> Path:
        return self.layout.state / "tls"

    @property
    def credentials_dir(self) -> Path:
        return self.layout.state / "credentials"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust (METER_KAFKA_CA_FILE)."""
        return self.credentials_dir / "ca.crt"

    def password_file(self, user: str) -> Path:
        return self.credentials_dir / f"{user}.password"

    def env_file(self, user: str) -> Path:
        return self.credentials_dir / f"{user}.env"

    @property
    def _formatted_marker(self) -> Path:
        return self.layout.state / "formatted-with-users"

    def client_env(self, user: str) -> dict[str, str]:
        """The variables a client of `user` sets (the password by file, never by value)."""
        return {
            "METER_KAFKA_BOOTSTRAP": self.layout.bootstrap,
            "METER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "METER_KAFKA_SASL_MECHANISM": MECHANISM,
            "METER_KAFKA_USERNAME": user,
            "METER_KAFKA_PASSWORD_FILE": str(self.password_file(user).resolve()),
            "METER_KAFKA_CA_FILE": str(self.ca_file.resolve()),
        }

    def client_security(self, user: str) -> KafkaSecurity:
        return KafkaSecurity.load(self.client_env(user))

    def instructions(self) -> str:
        """What `meter kafka start --secure` prints: who may do what, and how to connect (the
        password files' paths, never a password)."""
        n = self.names
        exports = "".join(f"  export {k}={v}\n" for k, v in self.client_env(METER).items())
        return (
            f"SASL_SSL with {MECHANISM}; users {METER} (meter's processes: {n.input_topic} "
            f"read, outputs and {n.group}-* topics, {n.group}* groups) and {PRODUCER} (write "
            f"to {n.input_topic}, nothing else)\n"
            "meter's processes (worker, store, api, simulate, demo) connect with:\n"
            f"{exports}"
            f"  or: set -a; . {self.env_file(METER)}; set +a\n"
            f"a gateway writing {n.input_topic}: the same with {self.env_file(PRODUCER)}"
        )

    # -- preparation (LocalBroker.start calls these two) ---------------------------------------
    def _write_properties(self) -> None:
        lay = self.layout
        formatted = (lay.data_dir / "meta.properties").is_file()
        if formatted and not self._formatted_marker.is_file():
            raise BrokerError(
                f"{lay.data_dir} was formatted without meter's users (SCRAM users are created "
                "only when storage is formatted, and formatted storage is never formatted "
                f"again): remove {lay.state} to start a new secure broker"
            )
        missing = [u for u in USERS if not self.password_file(u).is_file()]
        if formatted and missing:
            raise BrokerError(
                f"the password files of {', '.join(missing)} are gone from "
                f"{self.credentials_dir}, and the users cannot be created again on formatted "
                f"storage: remove {lay.state} to start a new secure broker"
            )
        private_dir(lay.state)
        private_dir(self.tls_dir)
        private_dir(self.credentials_dir)
        if not (self.tls_dir / "broker-keystore.pem").is_file():
            write_broker_certificates(self.tls_dir, lay.host)
        write_private(self.ca_file, (self.tls_dir / "ca.crt").read_bytes(), mode=0o644)
        for user in missing:
            write_private(self.password_file(user), secrets.token_urlsafe(32).encode() + b"\n")
        for user in USERS:
            lines = "".join(f"{k}={v}\n" for k, v in self.client_env(user).items())
            write_private(self.env_file(user), lines.encode())
        text = _SECURE_PROPERTIES.format(
            host=lay.host,
            port=lay.port,
            controller_port=lay.controller_port,
            data_dir=lay.data_dir,
            mechanism=MECHANISM,
            mechanism_lower=MECHANISM.lower(),
            admin=ADMIN,
            admin_password=self._password(ADMIN),
            keystore=self.tls_dir / "broker-keystore.pem",
            ca_cert=self.tls_dir / "ca.crt",
        )
        write_private(lay.properties_file, text.encode())

    def _password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def _format(self) -> None:
        lay = self.layout
        if (lay.data_dir / "meta.properties").is_file():
            return
        lay.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            *self._java_cmd("kafka.tools.StorageTool", "format", "-t", _new_cluster_id(), "-c"),
            str(lay.properties_file),
        ]
        for user in USERS:
            args += ["--add-scram", f"{MECHANISM}=[name={user},password={self._password(user)}]"]
        # The passwords go in an argument file (mode 0600, removed at once), never on the
        # command line, where `ps` would show them.
        argfile = lay.state / "format.args"
        write_private(argfile, "".join(f'"{a}"\n' for a in args[1:]).encode())
        try:
            done = subprocess.run(
                [args[0], f"@{argfile}"], capture_output=True, text=True, check=False
            )
        finally:
            argfile.unlink(missing_ok=True)
        if done.returncode != 0:
            output = _redact(done.stdout + done.stderr, [self._password(u) for u in USERS])
            raise BrokerError(f"formatting storage failed:\n{output}".rstrip())
        self._formatted_marker.write_text(" ".join(USERS) + "\n")

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> bool:
        """`LocalBroker.start`, then grant the ACLs (on every start, so that changed topic
        names get theirs; grants already there are kept)."""
        started = super().start(timeout)
        if started:
            self.grant_acls(timeout)
        return started

    def grant_acls(self, timeout: float = 60.0) -> None:
        from kafka.admin import KafkaAdminClient  # noqa: PLC0415 - only the secure broker
        from kafka.errors import KafkaError  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while True:
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.layout.bootstrap,
                    client_id="meter-kafka-acls",
                    **kafka_python_args(self.client_security(ADMIN)),
                )
                try:
                    result = admin.create_acls(acl_bindings(self.names))
                finally:
                    admin.close()
            except KafkaError as exc:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"granting the ACLs failed: {exc!r}") from None
                time.sleep(0.5)
                continue
            if result["failed"]:
                raise BrokerError(f"granting the ACLs failed: {result['failed']!r}")
            return


def acl_bindings(names: AclNames) -> list[object]:
    """What each user may do. `producer`: write to the input topic. `meter`: read the input
    topic; read, write and create its outputs and the group's internal topics (`<group>-*`);
    its consumer groups (`<group>*`: counters, routers, sinks). Nothing else: no ACL, no access."""
    from kafka.admin import (  # noqa: PLC0415 - kafka-python's admin types, only needed here
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    def grant(user: str, kind: ResourceType, name: str, prefixed: bool, *ops: str) -> list[ACL]:
        pattern = ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL
        resource = ResourcePattern(kind, name, pattern)
        return [
            ACL(f"User:{user}", "*", ACLOperation[op], ACLPermissionType.ALLOW, resource)
            for op in ops
        ]

    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    outputs = (names.dlq_topic, names.alerts_topic, names.windows_topic, names.quota_topic)
    acls = grant(PRODUCER, topic, names.input_topic, False, "WRITE")
    acls += grant(METER, topic, names.input_topic, False, "READ", "DESCRIBE", "CREATE")
    for name in outputs:
        acls += grant(METER, topic, name, False, "READ", "WRITE", "DESCRIBE", "CREATE")
    acls += grant(
        METER, topic, f"{names.group}-", True,
        "READ", "WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS",
    )  # fmt: skip
    acls += grant(METER, group, names.group, True, "READ", "DESCRIBE")
    return list(acls)


# -- helpers ---------------------------------------------------------------------------------
def _new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _redact(text: str, secrets_: list[str]) -> str:
    for secret in secrets_:
        text = text.replace(secret, "***")
    return text


__all__ = [
    "ADMIN",
    "METER",
    "PRODUCER",
    "AclNames",
    "SecureBroker",
    "acl_bindings",
    "secure_layout",
]
