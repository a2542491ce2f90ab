"""A statement as CSV: one file per section, and a manifest with each file's SHA-256 and the
statement's id (`--format csv`). Byte for byte the same for the same statement."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import Any

from meter.core.statement import canonical_bytes

__all__ = ["MANIFEST", "csv_files"]

MANIFEST = "manifest.json"
Json = dict[str, Any]


def _csv(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for row in rows:
        writer.writerow(
            ["" if v is None else str(v).lower() if isinstance(v, bool) else v for v in row]
        )
    return out.getvalue().encode()


def _about(doc: Json, sid: str) -> dict[str, bytes]:
    org, period = doc["org"], doc["period"]
    about = [
        ("statement_sha256", sid),
        ("org_id", org["id"]),
        ("org_name", org["name"]),
        ("from", period["from"]),
        ("to", period["to"]),
        ("tz", period["tz"]),
        ("contract_month", period["contract_month"]["window"]),
        ("as_of", doc["as_of"]),
        ("status", doc["status"]),
        ("final_after", doc["final_after"]),
        ("supersedes", doc["supersedes"]),
        ("policy_sha256", doc["policy"]["sha256"]),
        ("generator", f"{doc['generator']['name']} {doc['generator']['version']}"),
        ("window_inputs", doc["inputs"]["windows"]["count"]),
        ("window_inputs_sha256", doc["inputs"]["windows"]["sha256"]),
        ("alert_inputs", doc["inputs"]["alerts"]["count"]),
        ("alert_inputs_sha256", doc["inputs"]["alerts"]["sha256"]),
    ]
    return {"statement.csv": _csv(["field", "value"], about)}


def _usage(doc: Json) -> dict[str, bytes]:
    names = {a["id"]: a for a in doc["apps"]}
    return {
        "totals.csv": _csv(
            ["calls", "records"], [[doc["totals"]["calls"], doc["totals"]["records"]]]
        ),
        "by_app.csv": _csv(
            ["app", "name", "in_policy", "calls", "records"],
            [
                [
                    r["app"],
                    names[r["app"]]["name"],
                    names[r["app"]]["known"],
                    r["calls"],
                    r["records"],
                ]
                for r in doc["by_app"]
            ],
        ),
        "by_month.csv": _csv(
            ["month", "from", "to", "partial", "calls", "records"],
            [
                [m["month"], m["from"], m["to"], m["partial"], m["calls"], m["records"]]
                for m in doc["by_month"]
            ],
        ),
        "month_caps.csv": _csv(
            ["month", "cap", "metric", "limit", "used", "utilization"],
            [
                [m["month"], c["cap"], c["metric"], c["limit"], c["used"], c["utilization"]]
                for m in doc["by_month"]
                for c in m["caps"]
            ],
        ),
        "by_app_month.csv": _csv(
            ["month", "app", "calls", "records"],
            [[r["month"], r["app"], r["calls"], r["records"]] for r in doc["by_app_month"]],
        ),
        "by_endpoint.csv": _csv(
            ["rank", "endpoint", "calls", "records"],
            [
                [i + 1, r["endpoint"], r["calls"], r["records"]]
                for i, r in enumerate(doc["by_endpoint"]["rows"])
            ],
        ),
    }


def _caps_crossed(doc: Json) -> dict[str, bytes]:
    return {
        "caps_crossed.csv": _csv(
            [
                "crossed_at",
                "subject_type",
                "subject",
                "cap",
                "metric",
                "threshold",
                "severity",
                "window_size",
                "window_start",
                "window_end",
                "used",
                "limit",
                "late",
                "alert_id",
            ],
            [
                [
                    c["crossed_at"],
                    c["subject_type"],
                    c["subject"],
                    c["cap"],
                    c["metric"],
                    c["threshold"],
                    c["severity"],
                    c["window"]["size"],
                    c["window"]["start"],
                    c["window"]["end"],
                    c["used"],
                    c["limit"],
                    c["late"],
                    c["id"],
                ]
                for c in doc["caps_crossed"]
            ],
        ),
    }


def _restricted(doc: Json) -> dict[str, bytes]:
    ru = doc["restricted_use"]
    return {
        "restricted_by_month.csv": _csv(
            ["recipient", "month", "app", "calls", "records"],
            [
                [m["recipient"], m["month"], a["app"], a["calls"], a["records"]]
                for m in ru["by_month"]
                for a in m["apps"]
            ],
        ),
        "restricted_days.csv": _csv(
            ["date", "recipient", "app", "calls", "records"],
            [
                [d["date"], d["recipient"], a["app"], a["calls"], a["records"]]
                for d in ru["days"]
                for a in d["apps"]
            ],
        ),
        "restricted_alerts.csv": _csv(
            ["date", "app", "recipient", "rule", "severity", "crossed_at", "late", "alert_id"],
            [
                [
                    a["date"],
                    a["app"],
                    a["recipient"],
                    a["rule"],
                    a["severity"],
                    a["crossed_at"],
                    a["late"],
                    a["id"],
                ]
                for a in ru["alerts"]
            ],
        ),
    }


def _data_quality(doc: Json) -> dict[str, bytes]:
    q = doc["data_quality"]
    return {
        "data_quality.csv": _csv(
            ["measure", "value"],
            [(k, v) for k, v in q.items() if not isinstance(v, dict | list)]
            + [
                ("unattributed_calls", q["unattributed"]["calls"]),
                ("unattributed_records", q["unattributed"]["records"]),
                ("unknown_apps", " ".join(q["unknown_apps"])),
            ],
        ),
    }


def csv_files(doc: Json, sid: str) -> dict[str, bytes]:
    """File name -> bytes: every section's CSV and `manifest.json` (canonical JSON)."""
    files = {
        **_about(doc, sid),
        **_usage(doc),
        **_caps_crossed(doc),
        **_restricted(doc),
        **_data_quality(doc),
    }
    manifest = {
        "statement": sid,
        "files": [
            {
                "name": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "rows": data.count(b"\n") - 1,
            }
            for name, data in sorted(files.items())
        ],
    }
    return {**files, MANIFEST: canonical_bytes(manifest)}
