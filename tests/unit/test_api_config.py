"""`meter api` without a server: its settings, the tokens file, query parameters and the OpenAPI
document it serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from meter.adapters.api.auth import Principal, Tokens, digest, new_token
from meter.adapters.api.openapi import document
from meter.adapters.api.params import Params
from meter.adapters.api.problems import Problem
from meter.adapters.api.settings import ApiSettings
from meter.core.errors import ConfigError

ENV = {"METER_POLICY": "policy.yaml"}


def test_without_tokens_the_api_listens_on_loopback_only(tmp_path: Path) -> None:
    assert ApiSettings.load({}, ENV).host == "127.0.0.1"
    assert ApiSettings.load({"host": "::1"}, ENV).tokens_file is None
    with pytest.raises(ConfigError) as refused:
        ApiSettings.load({"host": "0.0.0.0"}, ENV)
    assert refused.value.field == "--tokens-file / METER_API_TOKENS_FILE"
    tokens = tmp_path / "t.yaml"
    opened = ApiSettings.load({"host": "0.0.0.0", "tokens_file": str(tokens)}, ENV)
    assert opened.tokens_file == tokens


def test_a_policy_is_required_and_a_password_is_never_shown() -> None:
    with pytest.raises(ConfigError) as missing:
        ApiSettings.load({}, {})
    assert missing.value.field == "--policy / METER_POLICY"
    shown = repr(ApiSettings.load({"database": "postgresql://u:hunter2@db/meter"}, ENV))
    assert "hunter2" not in shown


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    return path


def test_tokens_resolve_to_their_scope(tmp_path: Path) -> None:
    admin, acme = new_token(), new_token()
    assert admin.startswith("mtr_")
    assert admin != acme
    path = write(
        tmp_path,
        "tokens:\n"
        f"  - {{name: ops, scope: admin, sha256: {digest(admin)}}}\n"
        f'  - {{name: portal, scope: "org:acme", sha256: {digest(acme).upper()}}}\n',
    )
    tokens = Tokens.load(path, "--tokens-file")
    assert tokens.principal(f"Bearer {admin}") == Principal("ops", None)
    assert tokens.principal(f"Bearer {acme}") == Principal("portal", "acme")
    assert tokens.principal(f"Bearer {acme}x") is None
    assert tokens.principal(acme) is None  # not a bearer header
    assert tokens.principal(None) is None
    assert Principal("portal", "acme").sees_org("acme")
    assert not Principal("portal", "acme").sees_org("globex")
    assert not Principal("portal", "acme").sees_org(None)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("tokens: []", "--tokens-file", "non-empty 'tokens' list"),
        ("tokens:\n  - {name: x, scope: root, sha256: " + "a" * 64 + "}",
         "tokens[0].scope", "'admin' or 'org:<org id>'"),
        ("tokens:\n  - {name: x, scope: admin, sha256: abc}", "tokens[0].sha256", "64 hex"),
        ("tokens:\n  - {scope: admin, sha256: " + "a" * 64 + "}", "tokens[0].name", "non-empty"),
        ("tokens: [", "--tokens-file", "not valid YAML"),
    ],
)  # fmt: skip
def test_a_bad_tokens_file_names_the_entry(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        Tokens.load(write(tmp_path, text), "--tokens-file")
    assert bad.value.field.endswith(field)
    assert message in str(bad.value)


def params(query: str, allowed: tuple[str, ...]) -> Params:
    return Params(make_mocked_request("GET", f"/x?{query}"), allowed)


def problem_param(
    query: str, allowed: tuple[str, ...], call: str, *args: object, **kw: object
) -> str:
    with pytest.raises(Problem) as caught:
        getattr(params(query, allowed), call)(*args, **kw)
    assert caught.value.status == 400
    name: str = caught.value.extra["invalid-params"][0]["name"]
    return name


def test_parameters_are_checked_and_named() -> None:
    with pytest.raises(Problem) as unknown:
        params("form=2022-03-01", ("from", "to"))
    assert unknown.value.extra["invalid-params"][0]["name"] == "form"
    with pytest.raises(Problem):
        params("from=a&from=b", ("from",))
    assert problem_param("from=", ("from",), "text", "from") == "from"
    assert problem_param("from=March", ("from",), "time_ms", "from") == "from"
    assert problem_param("from=2022-03-01T10:00", ("from",), "time_ms", "from") == "from"
    assert problem_param("n=x", ("n",), "integer", "n", default=1, low=1, high=5) == "n"
    assert problem_param("n=9", ("n",), "integer", "n", default=1, low=1, high=5) == "n"
    p = params("from=2022-03-01&at=2022-03-01T10:00:00%2B01:00", ("from", "at"))
    assert p.time_ms("from") == 1_646_092_800_000
    assert p.time_ms("at") == 1_646_092_800_000 + 9 * 3_600_000
    assert p.time_ms("to") is None


def test_the_openapi_document_is_valid_and_self_contained() -> None:
    doc = document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert "$id" not in schemas["Window"]
    assert schemas["CapUsage"] == {"$ref": "#/components/schemas/QuotaState/$defs/cap_usage"}
    assert document() == doc  # a fresh copy each time
    doc["paths"].clear()
    assert document()["paths"]
