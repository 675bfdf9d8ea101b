"""The end-of-run assertions of a torture run, per platform.

- exactly one remote item per local item, and none for anything else;
- each holds the latest local version: its version marker (or content), image bytes and
  metadata as the platform keeps it;
- the platform's write history never went back: every write is a version the producers
  really made (never a half-written one), and no write carried a version older than one
  already written before it (re-sending the same version is fine);
- nothing is left pending, in flight or failed in the journal (``syncd status``).

Each check returns human-readable violations; an empty list is a pass.
"""

from __future__ import annotations

from collections import Counter

from bench.torture_platforms import Platform, Write
from bench.torture_producers import State

MAX_LISTED = 20


def remote_violations(platform: Platform, final: dict[str, State]) -> list[str]:
    out = []
    remote = platform.remote()
    for key in sorted(set(remote) - set(final)):
        out.append(f"{platform.name}: remote item {key!r} has no local item")
    for key, state in sorted(final.items()):
        found = remote.get(key, [])
        if len(found) != 1:
            out.append(f"{platform.name}: {key}: {len(found)} remote items, expected exactly one")
            continue
        item = found[0]
        if platform.marker_kind == "version" and item.marker != state.version:
            out.append(f"{platform.name}: {key}: holds version {item.marker}, the latest is {state.version}")
        if item.image != state.image:
            out.append(f"{platform.name}: {key}: the remote image differs from the latest local image")
        if item.metadata != platform.metadata_view(state.metadata):
            out.append(f"{platform.name}: {key}: remote metadata {item.metadata!r} != "
                       f"{platform.metadata_view(state.metadata)!r}")
    return out


def _candidates(platform: Platform, write: Write, states: list[State]) -> list[int]:
    """Indexes of the producer states this write could have carried."""
    if write.marker is not None:
        return [i for i, s in enumerate(states) if s.version == write.marker]
    if write.content is not None and write.content.endswith("|*"):  # image only
        return [i for i, s in enumerate(states) if f"{s.image_sha}|*" == write.content]
    return [i for i, s in enumerate(states) if platform.content_of(s.image_sha, s.metadata) == write.content]


def history_violations(platform: Platform, states: dict[str, list[State]]) -> tuple[list[str], int]:
    """Check the write history; returns (violations, number of writes checked)."""
    out = []
    floor: dict[str, int] = {}  # key -> the earliest state the last write can have carried
    writes = platform.history()
    for write in writes:
        known = states.get(write.key)
        if known is None:
            out.append(f"{platform.name}: a write of {write.key!r}, which no producer made")
            continue
        candidates = _candidates(platform, write, known)
        if not candidates:
            out.append(f"{platform.name}: {write.key}: a write of a version no producer made "
                       f"(marker {write.marker}, content {write.content}): half-written?")
            continue
        # The states are ordered; with ambiguous content pick the earliest state that keeps
        # the history monotone (a greedy choice is optimal for this).
        later = [i for i in candidates if i >= floor.get(write.key, 0)]
        if not later:
            out.append(f"{platform.name}: {write.key}: state #{max(candidates)} was written after "
                       f"state #{floor[write.key]}: an older version overwrote a newer one")
            continue
        floor[write.key] = min(later)
    return out, len(writes)


def journal_violations(status: dict) -> list[str]:
    out = []
    for folder in status["folders"]:
        if folder.get("settling"):
            out.append(f"journal: {folder['settling']} items still settling")
        for target in folder["targets"]:
            for what in ("pending", "in_flight", "failed"):
                if target[what]:
                    detail = target["failed_items"][:3] if what == "failed" else ""
                    out.append(f"journal: {target['target']}: {target[what]} {what} {detail}")
    for target in status["targets"]:
        if target.get("paused"):
            out.append(f"journal: target {target['target']} is paused: {target['paused']}")
    return out


def write_counts(platform: Platform) -> dict[str, int]:
    history = platform.history()
    per_key = Counter(w.key for w in history)
    return {"writes": len(history), "items_written": len(per_key),
            "max_writes_per_item": max(per_key.values(), default=0)}


def limited(violations: list[str]) -> list[str]:
    if len(violations) <= MAX_LISTED:
        return violations
    return violations[:MAX_LISTED] + [f"... and {len(violations) - MAX_LISTED} more"]
