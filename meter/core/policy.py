"""The usage policy: who may use how much (caps per app and per org) and restricted uses.
`load_policy` validates a decoded document; `Policy` answers per-event lookups in O(1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from meter.core.errors import PolicyError
from meter.core.policy_model import (
    DEFAULT_THRESHOLDS,
    App,
    Cap,
    Org,
    RestrictedUse,
    Threshold,
    Tier,
    format_statuses,
)
from meter.core.policy_parse import (
    field_mapping,
    parse_apps,
    parse_orgs,
    parse_restricted_uses,
    parse_tiers,
)
from meter.core.windows import WindowSpec, format_ms

__all__ = [
    "DEFAULT_THRESHOLDS",
    "App",
    "Cap",
    "Org",
    "Policy",
    "RestrictedUse",
    "Threshold",
    "Tier",
    "load_policy",
]

_CAP_HEADER = ("KEY", "METRIC", "WINDOW", "LIMIT", "THRESHOLDS", "FILTERS")


class Policy:
    """An immutable, validated policy with precomputed indexes for the per-event lookups."""

    __slots__ = (
        "_app_caps",
        "_restricted",
        "apps",
        "caps",
        "orgs",
        "restricted_uses",
        "tiers",
        "windows",
    )

    def __init__(
        self,
        *,
        orgs: Mapping[str, Org],
        apps: Mapping[str, App],
        tiers: Mapping[str, Tier] | None = None,
        restricted_uses: Iterable[RestrictedUse] = (),
    ) -> None:
        tiers = dict(tiers or {})
        for app in apps.values():
            if app.org_id not in orgs:
                raise PolicyError(f"apps.{app.id}.org", f"unknown org {app.org_id!r}")
            if app.tier is not None and app.tier not in tiers:
                raise PolicyError(f"apps.{app.id}.tier", f"unknown tier {app.tier!r}")
        self.orgs: Mapping[str, Org] = MappingProxyType(dict(orgs))
        self.apps: Mapping[str, App] = MappingProxyType(dict(apps))
        self.tiers: Mapping[str, Tier] = MappingProxyType(tiers)
        self.restricted_uses: tuple[RestrictedUse, ...] = tuple(restricted_uses)

        caps: dict[str, Cap] = {}
        where: dict[str, str] = {}
        for path, cap in _all_caps(self.tiers, self.orgs, self.apps):
            if cap.key in caps:
                raise PolicyError(
                    f"{path}.id", f"cap key {cap.key!r} is already used by {where[cap.key]}"
                )
            caps[cap.key] = cap
            where[cap.key] = path
        self.caps: Mapping[str, Cap] = MappingProxyType(caps)
        by_name = {cap.window.name: cap.window for cap in caps.values()}
        self.windows: tuple[WindowSpec, ...] = tuple(by_name[n] for n in sorted(by_name))

        self._app_caps: dict[str, tuple[Cap, ...]] = {
            app.id: (self.tiers[app.tier].caps if app.tier is not None else ()) + app.caps
            for app in self.apps.values()
        }
        self._restricted: dict[str, RestrictedUse] = {}
        for i, rule in enumerate(self.restricted_uses):
            folded = rule.recipient.casefold()
            if folded in self._restricted:
                raise PolicyError(
                    f"restricted_uses[{i}].recipient",
                    f"duplicate rule for recipient {rule.recipient!r}",
                )
            self._restricted[folded] = rule

    def known_app(self, app_id: str) -> bool:
        return app_id in self.apps

    def org_of(self, app_id: str, claimed: str | None) -> str | None:
        """The app's org: the policy's mapping wins over the event's claim; unknown app → claim."""
        app = self.apps.get(app_id)
        return claimed if app is None else app.org_id

    def app_caps(self, app_id: str) -> tuple[Cap, ...]:
        """App-level caps on this app: its tier's, then its own; () for unknown apps."""
        return self._app_caps.get(app_id, ())

    def org_caps(self, org_id: str) -> tuple[Cap, ...]:
        """The org's own caps (counted across its apps); () for unknown orgs."""
        org = self.orgs.get(org_id)
        return () if org is None else org.caps

    def restricted_rule(self, recipient: str) -> RestrictedUse | None:
        """The restricted-use rule for this recipient (case-insensitive), if any."""
        return self._restricted.get(recipient.casefold())

    def restricted_violation(
        self, org_id: str | None, recipient: str | None, time_ms: int
    ) -> RestrictedUse | None:
        """The rule broken by this use, if any: a 'notice' rule is broken unless the org has
        a government notice on record at or before `time_ms`."""
        if recipient is None:
            return None
        rule = self._restricted.get(recipient.casefold())
        if rule is None:
            return None
        org = None if org_id is None else self.orgs.get(org_id)
        notice = None if org is None else org.government_notice_ms
        if notice is None or time_ms < notice:
            return rule
        return None

    def describe(self) -> str:
        """The effective caps of every org and app, and the restricted-use rules, as text."""
        return "\n".join(self._describe_lines()) + "\n"

    def _describe_lines(self) -> Iterator[str]:
        yield (
            f"policy: orgs {len(self.orgs)}, apps {len(self.apps)}, tiers {len(self.tiers)}, "
            f"caps {len(self.caps)}, restricted-use rules {len(self.restricted_uses)}"
        )
        yield "windows: " + (", ".join(w.name for w in self.windows) or "none")
        apps_by_org: dict[str, list[App]] = {}
        for app in sorted(self.apps.values(), key=lambda a: a.id):
            apps_by_org.setdefault(app.org_id, []).append(app)
        for org in sorted(self.orgs.values(), key=lambda o: o.id):
            notice = org.government_notice_ms
            yield ""
            yield f"org {org.id} ({org.name})"
            yield "  government notice: " + ("none" if notice is None else format_ms(notice))
            yield "  org caps (counted across all its apps):"
            yield from _cap_table(org.caps, "    ")
            org_apps = apps_by_org.get(org.id, [])
            if not org_apps:
                yield "  no apps"
            for app in org_apps:
                tier = "none" if app.tier is None else app.tier
                yield f"  app {app.id} ({app.name}), tier {tier}:"
                yield from _cap_table(self.app_caps(app.id), "    ")
        yield ""
        yield "restricted uses:"
        if not self.restricted_uses:
            yield "  none"
        for rule in sorted(self.restricted_uses, key=lambda r: r.recipient.casefold()):
            yield (
                f"  recipient {rule.recipient}: requires a {rule.requires} on record, "
                f"else a {rule.severity} alert"
            )


def _all_caps(
    tiers: Mapping[str, Tier], orgs: Mapping[str, Org], apps: Mapping[str, App]
) -> Iterator[tuple[str, Cap]]:
    for scope, entities in (("tiers", tiers), ("orgs", orgs), ("apps", apps)):
        level = "org" if scope == "orgs" else "app"
        for entity_id, entity in entities.items():
            for i, cap in enumerate(entity.caps):
                if cap.level != level:
                    raise ValueError(f"cap {cap.key} in {scope} must have level {level!r}")
                yield f"{scope}.{entity_id}.caps[{i}]", cap


def _cap_row(cap: Cap) -> tuple[str, ...]:
    thresholds = ", ".join(f"{t.ratio * 100:g}% {t.severity}" for t in cap.thresholds)
    filters = []
    if cap.statuses is not None:
        filters.append("status " + format_statuses(cap.statuses))
    if cap.endpoints is not None:
        filters.append("endpoints " + ", ".join(sorted(cap.endpoints)))
    return (
        cap.key,
        cap.metric,
        cap.window.name,
        f"{cap.limit:,}" + (" (soft)" if cap.enforcement == "soft" else ""),
        thresholds,
        "; ".join(filters) or "all",
    )


def _cap_table(caps: tuple[Cap, ...], indent: str) -> Iterator[str]:
    if not caps:
        yield f"{indent}none"
        return
    rows = [_CAP_HEADER, *(_cap_row(cap) for cap in caps)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_CAP_HEADER))]
    for row in rows:
        yield (
            indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )


def load_policy(data: object) -> Policy:
    """Validate a decoded policy document (YAML or JSON) and build the `Policy`."""
    if not isinstance(data, Mapping):
        raise PolicyError("", f"the policy document must be a mapping, got {type(data).__name__}")
    fields = field_mapping(data, "", "policy")
    version = fields.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise PolicyError("version", f"unsupported version {version!r} (supported: 1)")
    tiers = parse_tiers(fields.get("tiers"))
    orgs = parse_orgs(fields.get("orgs"))
    apps = parse_apps(fields.get("apps"), orgs, tiers)
    restricted = parse_restricted_uses(fields.get("restricted_uses"))
    return Policy(orgs=orgs, apps=apps, tiers=tiers, restricted_uses=restricted)
