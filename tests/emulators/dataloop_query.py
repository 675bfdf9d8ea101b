"""Dataloop's query language (DQL) and metadata merge, as the Dataloop emulator applies them.

- ``matches(doc, filter)``: ``$and``/``$or``, ``{"field": value}`` equality (dotted paths;
  ``*`` and ``**`` globs in string values; a scalar matches a list field containing it),
  and ``{"field": {"$op": value}}`` with $eq $ne $gt $gte $lt $lte $in $nin $exists $match.
- ``page_of(docs, body)``: filter, ``sort`` and ``page``/``pageSize`` (max 1000) into the
  ``{items, hasNextPage, totalItemsCount, totalPagesCount}`` reply.
- ``deep_merge``: PATCH semantics, dicts merged recursively and ``null`` deleting a key.
"""

from __future__ import annotations

import copy
import re


def deep_merge(target: dict, patch: dict) -> None:
    """Merge ``patch`` into ``target``: dicts recursively, ``None`` deletes the key."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _field(doc: dict, path: str):
    value = doc
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _glob(pattern: str) -> re.Pattern:
    out = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.compile(f"^{out}$")


def _equal(actual, wanted) -> bool:
    if isinstance(wanted, str) and "*" in wanted and isinstance(actual, str):
        return bool(_glob(wanted).match(actual))
    if isinstance(actual, list) and not isinstance(wanted, list):
        return wanted in actual
    return actual == wanted


def _compare(actual, op: str, wanted) -> bool:
    if op == "$exists":
        return (actual is not _MISSING) == bool(wanted)
    if actual is _MISSING:
        return op in ("$ne", "$nin")
    if op == "$eq":
        return _equal(actual, wanted)
    if op == "$ne":
        return not _equal(actual, wanted)
    if op == "$in":
        return any(_equal(actual, w) for w in wanted)
    if op == "$nin":
        return not any(_equal(actual, w) for w in wanted)
    if op == "$match":
        return isinstance(actual, str) and re.search(str(wanted), actual) is not None
    try:
        return {"$gt": actual > wanted, "$gte": actual >= wanted, "$lt": actual < wanted, "$lte": actual <= wanted}[op]
    except TypeError:
        return False


def matches(doc: dict, query: dict) -> bool:
    """Whether ``doc`` satisfies a DQL filter object."""
    for key, wanted in query.items():
        if key == "$and":
            if not all(matches(doc, q) for q in wanted):
                return False
        elif key == "$or":
            if not any(matches(doc, q) for q in wanted):
                return False
        elif isinstance(wanted, dict) and wanted and all(k.startswith("$") for k in wanted):
            if not all(_compare(_field(doc, key), op, v) for op, v in wanted.items()):
                return False
        elif not _compare(_field(doc, key), "$eq", wanted):
            return False
    return True


def page_of(docs: list[dict], body: dict) -> dict:
    """Filter, sort and page ``docs`` as the query endpoints do."""
    found = [d for d in docs if matches(d, body.get("filter") or {})]
    for field, direction in reversed(list((body.get("sort") or {"id": "ascending"}).items())):
        found.sort(key=lambda d: str(_field(d, field)), reverse=str(direction).startswith("desc"))
    size = max(1, min(int(body.get("pageSize", 1000)), 1000))
    page = int(body.get("page", 0))
    chunk = found[page * size:(page + 1) * size]
    return {"items": chunk, "hasNextPage": (page + 1) * size < len(found), "totalItemsCount": len(found),
            "totalPagesCount": (len(found) + size - 1) // size}
