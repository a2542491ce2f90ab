"""Parsing of the sections of a policy document (already decoded from YAML or JSON) into
policy values. Every mistake raises `PolicyError` with the field's path, e.g. `apps.x.org`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from meter.core.errors import PolicyError
from meter.core.policy_model import (
    DEFAULT_THRESHOLDS,
    ENFORCEMENTS,
    METRICS,
    REQUIREMENTS,
    App,
    Cap,
    Org,
    RestrictedUse,
    Threshold,
    Tier,
)
from meter.core.windows import parse_window

__all__ = [
    "ALLOWED_FIELDS",
    "check_id",
    "field_mapping",
    "parse_apps",
    "parse_caps",
    "parse_endpoints",
    "parse_notice",
    "parse_orgs",
    "parse_restricted_uses",
    "parse_statuses",
    "parse_thresholds",
    "parse_tiers",
]

# The allowed keys of every mapping in the document; the JSON schema mirrors these.
ALLOWED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "policy": ("version", "tiers", "orgs", "apps", "restricted_uses"),
    "tier": ("caps",),
    "org": ("name", "government_notice", "caps"),
    "app": ("org", "tier", "name", "caps"),
    "cap": ("id", "metric", "window", "limit", "thresholds", "endpoints", "status", "enforcement"),
    "threshold": ("at", "severity"),
    "restricted_use": ("recipient", "requires", "severity"),
}

_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STATUS_CLASS_RE = re.compile(r"([1-5])xx")
_STATUS_RANGE_RE = re.compile(r"([0-9]{3})\s*-\s*([0-9]{3})")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_MAX_RATIO = 10.0
_MAX_LIMIT = 2**63 - 1


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def field_mapping(
    value: object, path: str, kind: str, *, required: tuple[str, ...] = ()
) -> dict[str, object]:
    """`value` as a mapping holding only the fields allowed for `kind`, and all `required`."""
    if not isinstance(value, Mapping):
        raise PolicyError(path, f"must be a mapping, got {type(value).__name__}")
    allowed = ALLOWED_FIELDS[kind]
    for key in value:
        if key not in allowed:
            raise PolicyError(
                _join(path, str(key)), f"unknown field {key!r} (allowed: {', '.join(allowed)})"
            )
    for key in required:
        if key not in value:
            raise PolicyError(_join(path, key), f"missing required field {key!r}")
    return dict(value)


def _entries(value: object, path: str) -> dict[str, object]:
    """A section keyed by id (tiers, orgs, apps); null means empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(
            path, f"must be a mapping of id to definition, got {type(value).__name__}"
        )
    out: dict[str, object] = {}
    for key, body in value.items():
        out[check_id(key, _join(path, str(key)))] = body
    return out


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list | tuple):
        raise PolicyError(path, f"must be a list, got {type(value).__name__}")
    return list(value)


def check_id(value: object, path: str) -> str:
    """An identifier: 1-128 characters from A-Z a-z 0-9 . _ : - (so never '|')."""
    if not isinstance(value, str):
        raise PolicyError(path, f"an id must be a string (quote it in YAML), got {value!r}")
    if not _ID_RE.fullmatch(value):
        raise PolicyError(
            path, f"invalid id {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ : -"
        )
    return value


def _name(value: object, path: str, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(path, f"must be a non-empty string, got {value!r}")
    return value


def _ratio(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(path, f"a threshold ratio must be a number, got {value!r}")
    ratio = float(value)
    if not math.isfinite(ratio) or not 0 < ratio <= _MAX_RATIO:
        raise PolicyError(path, f"a threshold ratio must be > 0 and <= {_MAX_RATIO:g}, got {value}")
    return ratio


def parse_thresholds(value: object, path: str) -> tuple[Threshold, ...]:
    """Numbers (critical from 1.0, else warning) or {at, severity}; sorted by ratio."""
    items = _list(value, path)
    if not items:
        raise PolicyError(path, "must list at least one threshold")
    seen: dict[float, int] = {}
    out: list[Threshold] = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        severity: str | None = None
        if isinstance(item, Mapping):
            body = field_mapping(item, item_path, "threshold", required=("at",))
            ratio = _ratio(body["at"], f"{item_path}.at")
            if body.get("severity") is not None:
                severity = check_id(body["severity"], f"{item_path}.severity")
        else:
            ratio = _ratio(item, item_path)
        if ratio in seen:
            raise PolicyError(
                item_path, f"duplicate threshold ratio {ratio:g} (see [{seen[ratio]}])"
            )
        seen[ratio] = i
        out.append(Threshold(ratio, severity or ("critical" if ratio >= 1.0 else "warning")))
    return tuple(sorted(out))


def _status_range(item: object, path: str) -> tuple[int, int]:
    if isinstance(item, int) and not isinstance(item, bool):
        low = high = item
    elif isinstance(item, str):
        text = item.strip().lower()
        cls = _STATUS_CLASS_RE.fullmatch(text)
        span = _STATUS_RANGE_RE.fullmatch(text)
        if cls:
            low, high = int(cls.group(1)) * 100, int(cls.group(1)) * 100 + 99
        elif span:
            low, high = int(span.group(1)), int(span.group(2))
        elif text.isdigit() and len(text) == 3:
            low = high = int(text)
        else:
            raise PolicyError(path, f"invalid status {item!r}: use '2xx', 429 or '500-599'")
    else:
        raise PolicyError(path, f"invalid status {item!r}: use '2xx', 429 or '500-599'")
    if not 100 <= low <= high <= 599:
        raise PolicyError(path, f"status {item!r} must lie within 100-599, low to high")
    return low, high


def parse_statuses(value: object, path: str) -> tuple[tuple[int, int], ...]:
    """HTTP status filters as sorted, merged inclusive ranges."""
    items = _list(value, path)
    if not items:
        raise PolicyError(path, "must list at least one status (omit the field to count all)")
    ranges = sorted(_status_range(item, f"{path}[{i}]") for i, item in enumerate(items))
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def parse_endpoints(value: object, path: str) -> frozenset[str]:
    """Endpoint filters: exact paths, or prefixes written with a trailing '*'."""
    items = _list(value, path)
    if not items:
        raise PolicyError(path, "must list at least one endpoint (omit the field to count all)")
    out: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise PolicyError(
                f"{path}[{i}]", f"an endpoint must be a non-empty string, got {item!r}"
            )
        if "*" in item[:-1]:
            raise PolicyError(f"{path}[{i}]", f"'*' is only allowed at the end, got {item!r}")
        out.add(item)
    return frozenset(out)


def _limit(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(path, f"limit must be a positive integer, got {value!r}")
    if not 0 < value <= _MAX_LIMIT:
        raise PolicyError(path, f"limit must be a positive integer below 2**63, got {value}")
    return value


def _cap(value: object, path: str, scope: str, scope_id: str, level: str) -> Cap:
    body = field_mapping(value, path, "cap", required=("id", "metric", "window", "limit"))
    cap_id = check_id(body["id"], f"{path}.id")
    metric = body["metric"]
    if metric not in METRICS:
        raise PolicyError(f"{path}.metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    thresholds = body.get("thresholds")
    endpoints = body.get("endpoints")
    statuses = body.get("status")
    enforcement = body.get("enforcement", "hard")
    if enforcement not in ENFORCEMENTS:
        raise PolicyError(
            f"{path}.enforcement", f"must be one of {', '.join(ENFORCEMENTS)}, got {enforcement!r}"
        )
    return Cap(
        id=cap_id,
        key=f"{scope}:{scope_id}:{cap_id}",
        level=level,
        metric=str(metric),
        window=parse_window(body["window"], f"{path}.window"),
        limit=_limit(body["limit"], f"{path}.limit"),
        endpoints=None if endpoints is None else parse_endpoints(endpoints, f"{path}.endpoints"),
        statuses=None if statuses is None else parse_statuses(statuses, f"{path}.status"),
        thresholds=DEFAULT_THRESHOLDS
        if thresholds is None
        else parse_thresholds(thresholds, f"{path}.thresholds"),
        enforcement=str(enforcement),
    )


def parse_caps(value: object, path: str, scope: str, scope_id: str, level: str) -> tuple[Cap, ...]:
    """A scope's cap list; `scope` is tier, org or app and prefixes each cap's key."""
    if value is None:
        return ()
    caps: list[Cap] = []
    first: dict[str, int] = {}
    for i, item in enumerate(_list(value, path)):
        cap = _cap(item, f"{path}[{i}]", scope, scope_id, level)
        if cap.id in first:
            raise PolicyError(
                f"{path}[{i}].id", f"duplicate cap id {cap.id!r} (first at caps[{first[cap.id]}])"
            )
        first[cap.id] = i
        caps.append(cap)
    return tuple(caps)


def parse_notice(value: object, path: str) -> int | None:
    """A date (UTC midnight) or an RFC 3339 datetime with offset, as epoch ms."""
    if value is None:
        return None
    moment: datetime
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str) and _DATE_RE.fullmatch(value.strip()):
        try:
            day = date.fromisoformat(value.strip())
        except ValueError as exc:
            raise PolicyError(path, f"invalid date {value!r}") from exc
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    elif isinstance(value, str) and _DATETIME_RE.fullmatch(value.strip()):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise PolicyError(path, f"invalid datetime {value!r}") from exc
    else:
        raise PolicyError(
            path, f"must be a date like 2022-06-01 or an RFC 3339 datetime, got {value!r}"
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PolicyError(path, f"a datetime needs a UTC offset such as 'Z', got {value!r}")
    return (moment - _EPOCH) // _ONE_MS


def parse_tiers(value: object) -> dict[str, Tier]:
    tiers: dict[str, Tier] = {}
    for tier_id, body in _entries(value, "tiers").items():
        path = f"tiers.{tier_id}"
        fields = field_mapping({} if body is None else body, path, "tier")
        caps = parse_caps(fields.get("caps"), f"{path}.caps", "tier", tier_id, "app")
        tiers[tier_id] = Tier(tier_id, caps)
    return tiers


def parse_orgs(value: object) -> dict[str, Org]:
    orgs: dict[str, Org] = {}
    for org_id, body in _entries(value, "orgs").items():
        path = f"orgs.{org_id}"
        fields = field_mapping({} if body is None else body, path, "org")
        orgs[org_id] = Org(
            id=org_id,
            name=_name(fields.get("name"), f"{path}.name", org_id),
            government_notice_ms=parse_notice(
                fields.get("government_notice"), f"{path}.government_notice"
            ),
            caps=parse_caps(fields.get("caps"), f"{path}.caps", "org", org_id, "org"),
        )
    return orgs


def parse_apps(value: object, orgs: Mapping[str, Org], tiers: Mapping[str, Tier]) -> dict[str, App]:
    apps: dict[str, App] = {}
    for app_id, body in _entries(value, "apps").items():
        path = f"apps.{app_id}"
        fields = field_mapping({} if body is None else body, path, "app", required=("org",))
        org_id = check_id(fields["org"], f"{path}.org")
        if org_id not in orgs:
            known = ", ".join(sorted(orgs)) or "none"
            raise PolicyError(f"{path}.org", f"unknown org {org_id!r} (known: {known})")
        tier: str | None = None
        if fields.get("tier") is not None:
            tier = check_id(fields["tier"], f"{path}.tier")
            if tier not in tiers:
                known = ", ".join(sorted(tiers)) or "none"
                raise PolicyError(f"{path}.tier", f"unknown tier {tier!r} (known: {known})")
        apps[app_id] = App(
            id=app_id,
            org_id=org_id,
            tier=tier,
            name=_name(fields.get("name"), f"{path}.name", app_id),
            caps=parse_caps(fields.get("caps"), f"{path}.caps", "app", app_id, "app"),
        )
    return apps


def parse_restricted_uses(value: object) -> tuple[RestrictedUse, ...]:
    if value is None:
        return ()
    rules: list[RestrictedUse] = []
    for i, item in enumerate(_list(value, "restricted_uses")):
        path = f"restricted_uses[{i}]"
        fields = field_mapping(item, path, "restricted_use", required=("recipient", "requires"))
        recipient = fields["recipient"]
        if not isinstance(recipient, str) or not recipient.strip():
            raise PolicyError(f"{path}.recipient", f"must be a non-empty string, got {recipient!r}")
        requires = fields["requires"]
        if requires not in REQUIREMENTS:
            raise PolicyError(
                f"{path}.requires",
                f"unsupported requirement {requires!r} (supported: {', '.join(REQUIREMENTS)})",
            )
        severity = fields.get("severity")
        rules.append(
            RestrictedUse(
                recipient=recipient,
                requires=str(requires),
                severity="critical" if severity is None else check_id(severity, f"{path}.severity"),
            )
        )
    return tuple(rules)
