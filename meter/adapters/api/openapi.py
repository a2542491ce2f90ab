"""The OpenAPI 3.1 document served at `/openapi.json`: `meter/schemas/openapi.yaml`, written by
hand, with the JSON Schemas of the meter's records (`window`, `alert`, `quota-state`) embedded
as components, so the document is self-contained and the records have one definition."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import yaml

EMBEDDED = {
    "quota-state.schema.json": "QuotaState",
    "window.schema.json": "Window",
    "alert.schema.json": "Alert",
}


def _read(name: str) -> str:
    return resources.files("meter").joinpath("schemas", name).read_text(encoding="utf-8")


def _rewrite(node: Any, internal_prefix: str | None) -> Any:
    """Refs to an embedded file point at its component; a file's own `#/...` refs (when
    `internal_prefix` is given) at the same place inside its component."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            new = value
            if key == "$ref" and isinstance(value, str):
                target, _, pointer = value.partition("#")
                if target in EMBEDDED:
                    new = f"#/components/schemas/{EMBEDDED[target]}{pointer}"
                elif not target and internal_prefix is not None:
                    new = f"{internal_prefix}{pointer}"
            out[key] = _rewrite(new, internal_prefix)
        return out
    if isinstance(node, list):
        return [_rewrite(item, internal_prefix) for item in node]
    return node


@functools.cache
def _built() -> str:
    doc = yaml.safe_load(_read("openapi.yaml"))
    schemas = doc["components"]["schemas"]
    for file, name in EMBEDDED.items():
        schema = json.loads(_read(file))
        schema.pop("$schema", None)
        schema.pop("$id", None)  # the document is the base: refs resolve inside it
        schemas[name] = _rewrite(schema, f"#/components/schemas/{name}")
    doc = _rewrite(doc, None)
    return json.dumps(doc)


def document() -> dict[str, Any]:
    """A fresh copy of the document."""
    out: dict[str, Any] = copy.deepcopy(json.loads(_built()))
    return out
