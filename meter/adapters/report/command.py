"""`meter report` and `meter report verify` (their arguments: `arguments`). Output goes through the
`out` (lines) and `raw` (a document's bytes) callables the CLI passes in."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from meter.adapters.policy_file import read_policy
from meter.adapters.report.outputs import FORMATS, render, write_outputs
from meter.adapters.report.service import issue
from meter.adapters.report.settings import SIGN, ReportSettings
from meter.adapters.report.signing import SigningKey, load_key
from meter.adapters.report.source import StatementRequest
from meter.adapters.report.verify import default_signature, read_optional, verify_statement
from meter.adapters.store.database import Database, open_database
from meter.adapters.store.settings import DATABASE, is_postgres
from meter.core.errors import ConfigError
from meter.core.statement import StatementError, parse_bound

__all__ = ["run_report", "run_verify"]

Out = Callable[[str], None]
Raw = Callable[[bytes], object]
FLAGS = {"from": "--from", "to": "--to", "tz": "--tz", "as_of": "--as-of", "org_id": "--org"}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _bound(text: str | None, tz: str, param: str, *, required: bool) -> int | None:
    if text is None:
        if required:
            raise ConfigError(FLAGS[param], "required")
        return None
    try:
        return parse_bound(text, tz, param)
    except StatementError as exc:
        raise ConfigError(FLAGS.get(exc.param, f"--{exc.param}"), exc.message) from None


def _open(url: str) -> Database:
    if not is_postgres(url) and not Path(url).exists():
        raise ConfigError(DATABASE.label, f"no usage store at {url} (`meter store` writes it)")
    return open_database(url, timeout_s=10.0)


def run_report(args: argparse.Namespace, env: Mapping[str, str], out: Out, raw: Raw) -> int:
    if not args.org:
        raise ConfigError("--org", "required: the organisation's id in the policy")
    formats = [f.strip() for f in str(args.format).split(",") if f.strip()]
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError("--format", f"one of {', '.join(FORMATS)}, got {fmt!r}")
    out_dir = Path(args.out) if args.out else None
    if args.top < 1 or args.top > 1000:
        raise ConfigError("--top", "from 1 to 1000")
    settings = ReportSettings.load(vars(args), env, top=args.top)
    if out_dir is None and ("csv" in formats or len(formats) != 1 or args.sign):
        raise ConfigError("--out", "needed for csv, several formats or a signature")
    tz = args.tz
    from_ms = _bound(args.from_, tz, "from", required=True)
    to_ms = _bound(args.to, tz, "to", required=True)
    as_of = _bound(args.as_of, tz, "as_of", required=False)
    assert from_ms is not None
    assert to_ms is not None
    policy = read_policy(settings.policy)
    # A key from METER_STATEMENT_KEY alone signs files, not a statement printed to stdout.
    signing = settings.sign if out_dir is not None else None
    key = None if signing is None else load_key(signing, env, SIGN.label, private=True)
    request = StatementRequest(args.org, from_ms, to_ms, tz, as_of)
    db = _open(settings.database)
    try:
        issued = issue(db, policy, request, settings.rules, key=key, record=not args.no_record)
    except StatementError as exc:
        raise ConfigError(FLAGS.get(exc.param, f"--{exc.param}"), exc.message) from None
    finally:
        db.close()
    doc = issued.doc
    if out_dir is None:
        raw(render(doc, issued.body, issued.id, formats[0]))
        return 0
    written = write_outputs(doc, issued.body, issued.id, formats, out_dir, issued.signature)
    status = doc["status"]
    if status != "final":
        status += f" (final once event time reaches {doc['final_after']})"
    out(f"statement {issued.id}")
    out(
        f"  {doc['org']['id']}, {doc['period']['from']} to {doc['period']['to']} "
        f"({doc['period']['tz']}), as of {doc['as_of']}: {status}"
    )
    if doc["supersedes"]:
        out(f"  supersedes {doc['supersedes']}")
    for what, path in written:
        out(f"  {what:<10} {path}")
    if doc["as_of"]:
        out(f"--as-of {doc['as_of']} gives these bytes again")
    return 0


def _verify_key(args: argparse.Namespace, env: Mapping[str, str]) -> SigningKey | None:
    spec = args.key or env.get("METER_STATEMENT_KEY") or None
    return None if spec is None else load_key(spec, env, "--key", private=False)


def run_verify(args: argparse.Namespace, env: Mapping[str, str], out: Out) -> int:
    path = Path(args.file)
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise ConfigError("FILE", f"cannot read {path}: {exc.strerror}") from exc
    if args.id is not None and not _SHA256.fullmatch(args.id):
        raise ConfigError("--id", "64 hex digits (a SHA-256)")
    sig_path = Path(args.sig) if args.sig else default_signature(path)
    if args.sig and not sig_path.exists():
        raise ConfigError("--sig", f"no such file {sig_path}")
    database = args.verify_database or env.get("METER_DATABASE") or None
    policy_path = args.verify_policy or env.get("METER_POLICY") or None
    if database and not policy_path:
        raise ConfigError("--policy", "needed to rebuild the statement from the store")
    db = _open(database) if database else None
    try:
        result = verify_statement(
            body,
            signature=read_optional(sig_path),
            key=_verify_key(args, env),
            expected_id=args.id,
            name=path.name,
            db=db,
            policy=read_policy(policy_path) if db is not None and policy_path else None,
        )
    finally:
        if db is not None:
            db.close()
    for line in result.lines:
        out(line)
    if not result.ok:
        out("the statement does NOT verify")
    elif result.anchored:
        out("the statement is intact")
    else:
        out("the statement is canonical JSON, but nothing says which id it must have: give --id, "
            "its signature or --database")  # fmt: skip
    return 0 if result.ok else 1
