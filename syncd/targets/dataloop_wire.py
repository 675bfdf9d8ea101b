"""Wire helpers of the Dataloop target: the API key's expiry (JWT ``exp``), the metadata
PATCH diff in dtlpy's format, and reading fields of item JSON."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

MARKER = "syncd"  # reserved key in metadata.user of items, and of the annotations syncd makes


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (seconds since the epoch) of a JWT, read without checking the
    signature; None when ``token`` is not a JWT with a numeric ``exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(_b64url(parts[1]))
    except (ValueError, binascii.Error):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


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
