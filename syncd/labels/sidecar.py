"""The sidecar file ``<stem>.json``: one pydantic model, parsed with precise errors.

Schema (see ``syncd schema`` for the JSON Schema)::

    {"metadata": {...any JSON object...},   # optional, default {}
     "labels": [ ...label objects... ]}      # optional, default [] (see syncd.labels.model)

An unknown top-level key, a wrong type, broken JSON, non-UTF-8 bytes or absurd nesting is an
``ItemError`` naming the file and the field; the item waits until the file is fixed.
"""

from __future__ import annotations

import json
import math
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from syncd.errors import ItemError
from syncd.labels.model import Label
from syncd.labels.redbrick import RedBrickLabel

MAX_SIDECAR_BYTES = 16 * 1024 * 1024


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] = Field(default_factory=dict, description="free-form item metadata (a JSON object)")
    # Validated (and RedBrick-format objects converted) by syncd.labels.validate once the image size
    # is known, so the messages can name the label's position and field.
    labels: list[Any] = Field(default_factory=list, description="annotations in pixel coordinates (see docs)")


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _not_json_constant(word: str):
    raise ValueError(f"{word} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large for a JSON number")
    return value


def parse_sidecar(data: bytes, *, name: str) -> Sidecar:
    """Parse sidecar bytes; ``name`` (the file's path as the user knows it) prefixes every error."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise ItemError(f"{name}: sidecar is larger than {MAX_SIDECAR_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ItemError(f"{name}: not UTF-8 text (byte {exc.start}): save the sidecar as UTF-8 JSON") from None
    if not text.strip():
        raise ItemError(f"{name}: the sidecar is empty: write a JSON object like {{\"metadata\": {{}}}}")
    try:
        # NaN, Infinity and numbers beyond the double range are not JSON: platforms refuse them.
        raw = json.loads(text, parse_constant=_not_json_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ItemError(f"{name}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ItemError(f"{name}: JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. integers with more digits than Python allows
        raise ItemError(f"{name}: invalid JSON value: {exc}") from None
    if not isinstance(raw, dict):
        raise ItemError(f"{name}: the sidecar must be a JSON object with 'metadata' and/or 'labels', "
                        f"not {type(raw).__name__}")
    try:
        sidecar = Sidecar.model_validate(raw)
        # Deeply nested metadata or unpaired surrogate escapes ("\\ud800") would break
        # platforms and our own JSON round trips (the version is hashed from this encoding).
        canonical(sidecar)
    except UnicodeEncodeError:
        raise ItemError(f"{name}: contains an unpaired UTF-16 surrogate escape (like \\ud800), "
                        "which is not valid Unicode text") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field(first["loc"])
        if first["type"] == "extra_forbidden":
            raise ItemError(f"{name}: unknown key {where!r}: a sidecar has only 'metadata' and 'labels'") from None
        raise ItemError(f"{name}: {where}: {first['msg']}") from None
    except (RecursionError, ValueError) as exc:
        raise ItemError(f"{name}: metadata cannot be serialised: {exc}") from None
    return sidecar


def canonical(sidecar: Sidecar) -> bytes:
    """Stable bytes for versioning: formatting and key order in the file do not matter."""
    return json.dumps(
        {"metadata": sidecar.metadata, "labels": sidecar.labels},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    ).encode("utf-8")


def sidecar_json_schema(extra_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of the sidecar file (``syncd schema``): ``metadata``, ``labels`` (syncd's
    label union or RedBrick's label objects, fully specified) and any ``extra_fields`` given as
    pydantic field definitions ``{"name": (type, Field(...))}`` (per-item settings the sidecar
    model adds)."""
    model = create_model(
        "Sidecar",
        __config__=ConfigDict(extra="forbid", title="syncd sidecar"),
        metadata=(dict[str, Any], Field(default_factory=dict, description="free-form item metadata (a JSON object)")),
        labels=(list[Union[Label, RedBrickLabel]], Field(
            default_factory=list, description="labels in pixel coordinates of the image (or RedBrick label objects)")),
        **(extra_fields or {}),
    )
    return model.model_json_schema()
