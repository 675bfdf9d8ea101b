"""Item JSON of the Dataloop target, pure (no I/O): the metadata PATCH diff in dtlpy's
format, and reading fields of item JSON."""

from __future__ import annotations

import json
from typing import Any

MARKER = "syncd"  # reserved key in metadata.user of items, and of the annotations syncd makes


def drop_nulls(value: Any) -> Any:
    """``value`` with every dict key whose value is None removed (recursively in dicts)."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def same_json(a: Any, b: Any) -> bool:
    # JSON-typed equality: 1 != 1.0 != True, as the platform stores them.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def metadata_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The PATCH diff that turns ``old`` into ``new`` under deep-merge with null = delete
    (the official SDK's DictDiffer format): changed keys nested, removed keys as None.
    Lists and other non-dict values are sent whole."""
    diff: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            diff[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = metadata_diff(old[key], value)
            if sub:
                diff[key] = sub
        elif not same_json(old[key], value):
            diff[key] = value
    return diff


def user_metadata(item: dict[str, Any]) -> dict[str, Any]:
    user = (item.get("metadata") or {}).get("user")
    return user if isinstance(user, dict) else {}


def stored_size(item: dict[str, Any]) -> Any:
    return ((item.get("metadata") or {}).get("system") or {}).get("size")
