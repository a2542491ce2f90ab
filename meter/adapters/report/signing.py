"""Signatures of statements: HMAC-SHA256 with a shared key from an environment variable, or
Ed25519 with a private key file (PEM, e.g. `openssl genpkey -algorithm ed25519 -out key.pem`).

A signature file is canonical JSON: `{"alg": "HS256"|"Ed25519", "keyid", "public_key"
(Ed25519 only), "sig", "statement"}`; `sig` signs the statement's exact bytes (base64)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meter.adapters.report.settings import KEY_HINT
from meter.core.errors import ConfigError
from meter.core.statement import canonical_bytes, statement_id

__all__ = ["HS256", "SignatureCheck", "SigningKey", "load_key", "sign", "verify"]

HS256 = "HS256"
ED25519 = "Ed25519"
MIN_HMAC_KEY = 16


@dataclass(frozen=True)
class SigningKey:
    """A key to sign (or check) statements with. `secret` for HMAC; `private`/`public` for
    Ed25519 (`private` None: check only)."""

    alg: str
    keyid: str
    secret: bytes | None = None
    private: Ed25519PrivateKey | None = None
    public: Ed25519PublicKey | None = None

    def public_bytes(self) -> bytes:
        assert self.public is not None
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hmac_key(secret: bytes) -> SigningKey:
    keyid = hmac.new(secret, b"meter statement key id", hashlib.sha256).hexdigest()[:16]
    return SigningKey(HS256, keyid, secret=secret)


def _ed25519_key(path: Path, label: str, *, private: bool) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(label, f"cannot read the key file {path}: {exc.strerror}") from exc
    loaded: Any
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        loaded = None
    if loaded is None and not private:
        try:
            loaded = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            loaded = None
    if isinstance(loaded, Ed25519PrivateKey):
        public = loaded.public_key()
        secret_key: Ed25519PrivateKey | None = loaded
    elif isinstance(loaded, Ed25519PublicKey):
        public, secret_key = loaded, None
    else:
        kind = "an unencrypted Ed25519 private key" if private else "an Ed25519 key"
        raise ConfigError(label, f"{path} is not {kind} in PEM")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SigningKey(
        ED25519, hashlib.sha256(raw).hexdigest()[:16], private=secret_key, public=public
    )


def load_key(spec: str, env: Mapping[str, str], label: str, *, private: bool) -> SigningKey:
    """The key named by `spec` (`KEY_HINT`); `private`: it must be able to sign."""
    kind, _, where = spec.partition(":")
    if kind == "hmac" and where:
        value = env.get(where)
        if not value:
            raise ConfigError(label, f"the environment variable {where} is not set")
        if len(value) < MIN_HMAC_KEY:
            raise ConfigError(
                label, f"the key in {where} is shorter than {MIN_HMAC_KEY} characters"
            )
        return _hmac_key(value.encode())
    if kind == "ed25519" and where:
        return _ed25519_key(Path(where), label, private=private)
    raise ConfigError(label, f"expected {KEY_HINT}, got {spec!r}")


def sign(body: bytes, key: SigningKey) -> bytes:
    """The signature file of the statement `body`."""
    if key.alg == HS256:
        assert key.secret is not None
        sig = hmac.new(key.secret, body, hashlib.sha256).digest()
        doc = {"alg": HS256, "keyid": key.keyid, "sig": _b64(sig)}
    else:
        assert key.private is not None
        doc = {
            "alg": ED25519,
            "keyid": key.keyid,
            "public_key": _b64(key.public_bytes()),
            "sig": _b64(key.private.sign(body)),
        }
    return canonical_bytes({**doc, "statement": statement_id(body)})


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    message: str


def verify(body: bytes, signature: bytes, key: SigningKey | None) -> SignatureCheck:
    """Whether `signature` (a signature file) signs exactly `body`; `key` must be given for
    HMAC, and for Ed25519 it is checked against the key named in the file."""
    try:
        doc = json.loads(signature)
        alg, keyid, sig = doc["alg"], doc["keyid"], base64.b64decode(doc["sig"], validate=True)
        named = doc["statement"]
    except (ValueError, KeyError, TypeError) as exc:
        return SignatureCheck(False, f"not a signature file: {exc}")
    if named != statement_id(body):
        return SignatureCheck(False, f"it signs statement {named}, not this one")
    if alg == HS256:
        if key is None or key.alg != HS256 or key.secret is None:
            return SignatureCheck(False, "an HMAC signature: give its key (--key hmac:ENV_VAR)")
        expected = hmac.new(key.secret, body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, sig):
            return SignatureCheck(False, f"HMAC-SHA256 does not match (key {key.keyid})")
        return SignatureCheck(True, f"HMAC-SHA256, key {key.keyid}: valid")
    if alg != ED25519:
        return SignatureCheck(False, f"unknown algorithm {alg!r}")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"]))
    except (ValueError, KeyError, TypeError) as exc:
        return SignatureCheck(False, f"the signature's public key is not valid: {exc}")
    public = embedded
    trusted = ""
    if key is not None:
        if key.public is None or key.public_bytes() != embedded.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ):
            return SignatureCheck(
                False, f"signed with key {keyid}, not with the given key {key.keyid}"
            )
        public = key.public
        trusted = " (the given key)"
    else:
        trusted = " (the key named in the signature: pass --key to check it is yours)"
    try:
        public.verify(sig, body)
    except InvalidSignature:
        return SignatureCheck(False, f"Ed25519 signature does not match (key {keyid})")
    return SignatureCheck(True, f"Ed25519, key {keyid}{trusted}: valid")
