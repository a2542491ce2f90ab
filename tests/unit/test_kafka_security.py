"""Kafka security settings: read from `METER_KAFKA_*` variables (never flags), turned into each
client library's arguments in one place, carried by every process's settings, and never shown:
not when printed, not in an error, not in the log. Also the secure local broker's files and ACLs,
without starting it."""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from meter.adapters.api.settings import ApiSettings
from meter.adapters.broker import BrokerError, BrokerLayout
from meter.adapters.kafka_security import aiokafka_args, faust_args, kafka_python_args
from meter.adapters.secure_broker import AclNames, SecureBroker, acl_bindings
from meter.adapters.store.settings import StoreSettings
from meter.cli import RedactingFormatter, build_parser
from meter.config import KAFKA_SECURITY_OPTIONS, KafkaSecurity, kafka_secrets
from meter.core.errors import ConfigError
from meter.worker_settings import WorkerSettings

SECRET = "s3cr3t-Pa55word"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "meter.password"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CA certificate (the secure broker's), so that TLS contexts can load it."""
    root = tmp_path_factory.mktemp("ca")
    broker = SecureBroker(BrokerLayout(home=root, state=root / "state"), AclNames())
    broker._write_properties()
    return broker.ca_file


def sasl_ssl(password_file: Path, ca_file: Path) -> dict[str, str]:
    return {
        "METER_KAFKA_USERNAME": "meter",
        "METER_KAFKA_PASSWORD_FILE": str(password_file),
        "METER_KAFKA_CA_FILE": str(ca_file),
    }


def test_nothing_configured_is_plaintext_and_adds_no_client_argument() -> None:
    s = KafkaSecurity.load({})
    assert s == KafkaSecurity()
    assert (s.protocol, s.sasl, s.tls, s.describe()) == ("PLAINTEXT", False, False, "PLAINTEXT")
    assert kafka_python_args(s) == aiokafka_args(s) == faust_args(s) == {}


def test_a_user_with_a_password_file_is_sasl_ssl_and_never_shown(
    password_file: Path, ca_file: Path
) -> None:
    s = KafkaSecurity.load(sasl_ssl(password_file, ca_file))
    assert (s.protocol, s.mechanism, s.username, s.password, s.ca_file) == (
        "SASL_SSL", "SCRAM-SHA-512", "meter", SECRET, ca_file,
    )  # fmt: skip
    assert s.describe() == "SASL_SSL (SCRAM-SHA-512) as meter"
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert "password='***'" in repr(s)
    by_value = KafkaSecurity.load({"METER_KAFKA_USERNAME": "meter", "METER_KAFKA_PASSWORD": SECRET})
    assert by_value.password == SECRET
    assert by_value.ca_file is None


def test_each_library_gets_the_same_connection(password_file: Path, ca_file: Path) -> None:
    s = KafkaSecurity.load(sasl_ssl(password_file, ca_file))
    args = kafka_python_args(s)
    context = args.pop("ssl_context")
    assert args == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meter",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the CA file's, not the system's
    aio = aiokafka_args(s)
    assert {k: v for k, v in aio.items() if k != "ssl_context"} == args
    # faust maps its credentials to aiokafka's arguments itself: it must arrive at the same.
    via_faust = dict(credentials_to_aiokafka_auth(faust_args(s)["broker_credentials"]))
    assert isinstance(via_faust.pop("ssl_context"), ssl.SSLContext)
    assert via_faust == args
    assert SECRET not in repr(faust_args(s))

    async def construct() -> None:  # aiokafka checks the arguments when a client is built
        AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **aio)
        AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **aio)

    asyncio.run(construct())


@pytest.mark.parametrize(
    ("protocol", "keys"),
    [
        ("SSL", {"security_protocol", "ssl_context"}),
        ("SASL_PLAINTEXT", {"security_protocol", "sasl_mechanism", "sasl_plain_username",
                            "sasl_plain_password"}),
    ],
)  # fmt: skip
def test_tls_without_sasl_and_sasl_without_tls(protocol: str, keys: set[str]) -> None:
    env = {"METER_KAFKA_SECURITY_PROTOCOL": protocol.lower()}
    if protocol.startswith("SASL"):
        env |= {"METER_KAFKA_USERNAME": "u", "METER_KAFKA_PASSWORD": SECRET}
    s = KafkaSecurity.load(env)
    assert s.protocol == protocol
    assert set(kafka_python_args(s)) == set(aiokafka_args(s)) == keys
    credentials = faust_args(s)["broker_credentials"]
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == protocol


@pytest.mark.parametrize(
    ("env", "field", "says"),
    [
        ({"METER_KAFKA_USERNAME": "u"}, "METER_KAFKA_PASSWORD or METER_KAFKA_PASSWORD_FILE",
         "required with SASL_SSL"),
        ({"METER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "METER_KAFKA_PASSWORD": SECRET},
         "METER_KAFKA_USERNAME", "required with SASL_SSL"),
        ({"METER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "METER_KAFKA_USERNAME": "u",
          "METER_KAFKA_PASSWORD": SECRET}, "METER_KAFKA_USERNAME", "needs a SASL protocol"),
        ({"METER_KAFKA_PASSWORD": SECRET}, "METER_KAFKA_PASSWORD", "needs a SASL protocol"),
        ({"METER_KAFKA_USERNAME": "u", "METER_KAFKA_PASSWORD": SECRET,
          "METER_KAFKA_PASSWORD_FILE": "PASSWORD_FILE"}, "METER_KAFKA_PASSWORD",
         "set it or METER_KAFKA_PASSWORD_FILE, not both"),
        ({"METER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "METER_KAFKA_SECURITY_PROTOCOL",
         "invalid value 'TLS': expected one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({"METER_KAFKA_USERNAME": "u", "METER_KAFKA_PASSWORD": SECRET,
          "METER_KAFKA_SASL_MECHANISM": "GSSAPI"}, "METER_KAFKA_SASL_MECHANISM",
         "expected one of SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"),
        ({"METER_KAFKA_CA_FILE": "CA_FILE"}, "METER_KAFKA_CA_FILE", "needs SSL or SASL_SSL"),
        ({"METER_KAFKA_SECURITY_PROTOCOL": "SSL", "METER_KAFKA_CA_FILE": "/nowhere/ca.crt"},
         "METER_KAFKA_CA_FILE", "invalid value '/nowhere/ca.crt': no such file"),
        ({"METER_KAFKA_USERNAME": "u", "METER_KAFKA_PASSWORD_FILE": "EMPTY_FILE"},
         "METER_KAFKA_PASSWORD_FILE", "must hold the password on one line"),
    ],
)  # fmt: skip
def test_a_mistake_names_the_variable_and_never_the_password(
    env: dict[str, str], field: str, says: str, password_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    paths = {"PASSWORD_FILE": str(password_file), "CA_FILE": str(ca_file), "EMPTY_FILE": str(empty)}
    env = {k: paths.get(v, v) for k, v in env.items()}
    with pytest.raises(ConfigError) as error:
        KafkaSecurity.load(env)
    assert error.value.field == field
    assert says in error.value.message
    assert SECRET not in str(error.value)


def test_every_process_carries_it_and_prints_it_hidden(password_file: Path, ca_file: Path) -> None:
    env = {"METER_POLICY": "p.yaml", **sasl_ssl(password_file, ca_file)}
    expected = KafkaSecurity.load(env)
    for settings in (
        WorkerSettings.load({}, env),
        StoreSettings.load({}, env),
        ApiSettings.load({}, env),
    ):
        assert settings.kafka_security == expected
        assert SECRET not in repr(settings)
    assert WorkerSettings.load({}, {"METER_POLICY": "p.yaml"}).kafka_security == KafkaSecurity()


def test_no_command_offers_a_flag_for_them() -> None:
    parser = build_parser()
    assert all(not o.flag for o in KAFKA_SECURITY_OPTIONS)
    for command in (["worker"], ["store"], ["api"], ["simulate"], ["demo"], ["kafka", "start"]):
        parser.parse_args(command)
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--kafka-password", SECRET])


def test_the_log_never_shows_the_configured_password(password_file: Path) -> None:
    env = {"METER_KAFKA_PASSWORD_FILE": str(password_file), "METER_KAFKA_PASSWORD": "other-one"}
    assert sorted(kafka_secrets(env)) == sorted([SECRET, "other-one"])
    assert kafka_secrets({"METER_KAFKA_PASSWORD_FILE": "/nowhere"}) == []
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s", kafka_secrets(env)))
    log = logging.getLogger("test-redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        config: dict[str, Any] = {"sasl_plain_username": "meter", "sasl_plain_password": SECRET}
        log.warning("Starting KafkaAdminClient with configuration: %s", config)
        try:
            raise RuntimeError(f"refused other-one and {SECRET}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "'sasl_plain_password': '***'" in text
    assert "RuntimeError: refused *** and ***" in text
    assert SECRET not in text
    assert "other-one" not in text


# -- the secure local broker, without starting it ------------------------------------------------
def test_the_producer_may_write_the_input_topic_and_meter_what_it_needs() -> None:
    names = AclNames(input_topic="in", dlq_topic="dlq", alerts_topic="al", windows_topic="wi",
                     quota_topic="qu", group="g")  # fmt: skip
    grants = {
        (a.principal, a.resource_pattern.resource_type.name, a.resource_pattern.resource_name,
         a.resource_pattern.pattern_type.name, a.operation.name, a.permission_type.name, a.host)
        for a in acl_bindings(names)
    }  # fmt: skip
    producer = {g for g in grants if g[0] == "User:producer"}
    assert producer == {("User:producer", "TOPIC", "in", "LITERAL", "WRITE", "ALLOW", "*")}
    meter = {(kind, name, pattern, op) for _, kind, name, pattern, op, *_ in grants - producer}
    assert meter == (
        {("TOPIC", "in", "LITERAL", op) for op in ("READ", "DESCRIBE", "CREATE")}
        | {("TOPIC", t, "LITERAL", op) for t in ("dlq", "al", "wi", "qu")
           for op in ("READ", "WRITE", "DESCRIBE", "CREATE")}
        | {("TOPIC", "g-", "PREFIXED", op)
           for op in ("READ", "WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS")}
        | {("GROUP", "g", "PREFIXED", op) for op in ("READ", "DESCRIBE")}
    )  # fmt: skip
    assert {g[5] for g in grants} == {"ALLOW"}


def test_acl_names_follow_the_workers_variables() -> None:
    env = {"METER_INPUT_TOPIC": "calls", "METER_GROUP": "billing"}
    assert AclNames.load(env) == AclNames(
        input_topic="calls", dlq_topic="calls.dlq", group="billing"
    )


def test_secure_broker_files_are_private_and_made_once(tmp_path: Path) -> None:
    layout = BrokerLayout(home=tmp_path, state=tmp_path / "kafka-secure", port=19500)
    broker = SecureBroker(layout, AclNames())
    broker._write_properties()
    passwords = {u: broker.password_file(u).read_text() for u in ("admin", "meter", "producer")}
    assert len(set(passwords.values())) == 3
    assert all(len(p.strip()) >= 40 for p in passwords.values())
    for path in [*broker.credentials_dir.iterdir(), *broker.tls_dir.iterdir()]:
        public = path.name == "ca.crt"
        assert stat.S_IMODE(path.stat().st_mode) == (0o644 if public else 0o600), path
    assert stat.S_IMODE(layout.properties_file.stat().st_mode) == 0o600
    properties = layout.properties_file.read_text()
    assert f'username="admin" password="{passwords["admin"].strip()}";' in properties
    assert passwords["meter"].strip() not in properties
    env = dict(line.split("=", 1) for line in broker.env_file("meter").read_text().splitlines())
    assert env == broker.client_env("meter")
    assert env["METER_KAFKA_PASSWORD_FILE"] == str(broker.password_file("meter").resolve())
    assert broker.client_security("meter").password == passwords["meter"].strip()
    assert "METER_KAFKA_PASSWORD=" not in broker.instructions()
    assert all(p.strip() not in broker.instructions() for p in passwords.values())
    # A second start keeps the passwords and certificates the storage was formatted with.
    keystore = (broker.tls_dir / "broker-keystore.pem").read_bytes()
    layout.data_dir.mkdir(parents=True)
    (layout.data_dir / "meta.properties").write_text("formatted\n")
    (layout.state / "formatted-with-users").write_text("admin meter producer\n")
    broker._write_properties()
    assert {u: broker.password_file(u).read_text() for u in passwords} == passwords
    assert (broker.tls_dir / "broker-keystore.pem").read_bytes() == keystore


def test_storage_formatted_without_the_users_is_refused_clearly(tmp_path: Path) -> None:
    """SCRAM users exist only if created when storage is formatted, and formatted storage is
    never formatted again: starting on it would start a broker nobody can log in to."""
    layout = BrokerLayout(home=tmp_path, state=tmp_path / "kafka-secure")
    broker = SecureBroker(layout, AclNames())
    layout.data_dir.mkdir(parents=True)
    (layout.data_dir / "meta.properties").write_text("formatted by a plain broker\n")
    with pytest.raises(BrokerError, match="formatted without meter's users") as error:
        broker._write_properties()
    assert f"remove {layout.state}" in str(error.value)
    (layout.state / "formatted-with-users").write_text("admin meter producer\n")
    with pytest.raises(BrokerError, match="password files of admin, meter, producer are gone"):
        broker._write_properties()
