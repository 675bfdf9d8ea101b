"""``syncd status``: what is delivered, pending and failed, per folder and target.

Reads the journal read-only with a handful of aggregate queries (indexed, in
syncd.journal.queries), so it answers quickly on 100k items and can run while the daemon runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from syncd.config import Config
from syncd.diskguard import free_bytes
from syncd.journal.guard import write_lock_holder
from syncd.journal.queries import JournalReader
from syncd.journal.schema import DB_NAME, LOCK_NAME, translated
from syncd.sizes import format_size

MAX_FAILED_LISTED = 50


def collect(config: Config, *, now: float | None = None, failed_limit: int = MAX_FAILED_LISTED,
            migrate: bool = True) -> dict[str, Any]:
    """The status as a JSON-serialisable dict (the shape ``status --json`` prints).
    ``migrate``: see ``syncd.journal.schema.connect_readonly``."""
    now = time.time() if now is None else now
    journal = JournalReader.open_readonly(config.daemon.state_dir, migrate=migrate)
    try:
        with translated(config.daemon.state_dir / DB_NAME):  # damaged, or a lock held past the timeout
            return _collect(config, journal, now, failed_limit)
    finally:
        journal.close()


def _collect(config: Config, journal: JournalReader, now: float, failed_limit: int) -> dict[str, Any]:
    """The status from an open journal (``collect``)."""
    removed = journal.retention_totals()
    folders = []
    for folder in config.folders:
        name = str(folder.path)
        item_states = journal.item_counts(name)
        per_target = []
        alone = journal.only_folder(name)
        for target in folder.targets:
            counts = journal.delivery_counts(name, target, alone)
            oldest = journal.oldest_pending(name, target)
            per_target.append(
                {
                    "target": target,
                    "delivered": counts.get("acked", 0),
                    "pending": counts.get("pending", 0) + counts.get("in_flight", 0),
                    "in_flight": counts.get("in_flight", 0),
                    "failed": counts.get("failed", 0),
                    "oldest_pending_seconds": None if oldest is None else round(now - oldest, 1),
                    "failed_items": [{"key": key, "reason": reason}
                                     for key, reason in journal.failed_deliveries(name, target, failed_limit)],
                    "not_representable": [{"key": key, "note": note}
                                          for key, note in journal.delivery_notes(name, target, failed_limit)],
                }
            )
        folders.append(
            {
                "folder": name,
                "labels_failed": [{"key": key, "reason": error}
                                  for key, error in journal.label_failures(name, failed_limit)],
                "items": sum(n for s, n in item_states.items() if s not in ("gone",)),
                "settling": item_states.get("settling", 0),
                "deleted_after_upload": item_states.get("deleted", 0),
                "not_settling": [{"key": key, "note": error}
                                 for key, error in journal.slow_settling(name, failed_limit)],
                "unreadable": [{"path": path, "reason": reason} for path, reason in journal.unreadable_dirs(name)],
                "late_companions": [{"key": key, "note": note}
                                    for key, note in journal.late_companions(name, failed_limit)],
                "targets": per_target,
                "free_bytes": free_bytes(folder.path),
                "retention": _retention(folder.retention, removed.get(name)),
            }
        )
    targets = []
    rates = journal.target_rates()
    by_operator = journal.operator_pauses()
    for name, settings in config.target_settings.items():
        paused, last_success, last_error, last_error_at = journal.target_health(name)
        rate, rate_reason = rates.get(name, (None, None))
        since = by_operator.get(name)
        if since is not None:
            paused = "paused by operator" + (f"; also: {paused}" if paused else "")
        targets.append(
            {
                "target": name,
                "platform": settings.platform,
                "paused": paused,
                "paused_by_operator": since is not None,
                "paused_since": _iso(since),
                "last_success": _iso(last_success),
                "last_error": last_error,
                "last_error_at": _iso(last_error_at),
                "rate": rate,  # requests/s the daemon last held it to; None: unlimited
                "rate_reason": rate_reason,  # why; None until a daemon recorded it
            }
        )
    min_free = config.daemon.min_free_space
    state_free = free_bytes(config.daemon.state_dir)
    disk = {"state_dir": str(config.daemon.state_dir), "state_free_bytes": state_free,
            "min_free_bytes": min_free or None,
            "low": bool(min_free and state_free is not None and state_free < min_free)}
    return {"generated_at": _iso(now), "journal": _journal(config), "folders": folders, "targets": targets,
            "disk": disk}


def _journal(config: Config) -> dict[str, Any]:
    """The journal's path, and who holds its write lock when another process than the daemon
    does (the daemon cannot record anything meanwhile: syncd.lockwait)."""
    state_dir = config.daemon.state_dir
    try:
        daemon_pid = int((state_dir / LOCK_NAME).read_text().strip())
    except (OSError, ValueError):
        daemon_pid = None
    db = state_dir / DB_NAME
    return {"path": str(db), "locked_by": write_lock_holder(db, but=daemon_pid)}


def _retention(policy: str, totals) -> dict[str, Any] | None:
    """What retention removed from a folder (None: it is off there)."""
    if policy == "off":
        return None
    items, size, last_at, last_key = totals or (0, 0, None, None)
    return {"policy": policy, "removed_items": items, "removed_bytes": size, "last_removed_at": _iso(last_at),
            "last_removed_key": last_key}


def as_json(status: dict[str, Any]) -> str:
    """The JSON text ``status --json`` prints (and the HTTP listener's /status.json serves)."""
    return json.dumps(status, indent=2)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def render(status: dict[str, Any]) -> str:
    """Human-readable status text."""
    lines = []
    journal = status.get("journal") or {}
    if journal.get("locked_by"):
        lines.append(f"journal {journal['path']}: LOCKED by {journal['locked_by']}, which keeps a write transaction "
                     "open: syncd records nothing until it ends (COMMIT, or quit that sqlite3 shell)")
    disk = status.get("disk") or {}
    if disk.get("low"):
        lines.append(f"DISK LOW: the filesystem of the state directory {disk['state_dir']} has "
                     f"{format_size(disk['state_free_bytes'])} free, below min_free_space "
                     f"{format_size(disk['min_free_bytes'])}: syncd takes no new work until there is room")
    for folder in status["folders"]:
        deleted = folder["deleted_after_upload"]
        lines.append(f"{folder['folder']}: {folder['items']} items, {folder['settling']} settling"
                     + (f", {deleted} deleted after upload" if deleted else ""))
        for entry in folder["unreadable"]:
            lines.append(f"  UNREADABLE {entry['path']}: {entry['reason']} (skipped: nothing in it is delivered)")
        for late in folder["late_companions"]:
            lines.append(f"  LATE {late['key']}: {late['note']}")
        kept = folder.get("retention")
        if kept:
            free = "" if folder["free_bytes"] is None else f"; {format_size(folder['free_bytes'])} free"
            last = (f", the last {kept['last_removed_key']} at {kept['last_removed_at']}"
                    if kept["last_removed_key"] else "")
            lines.append(f"  retention ({kept['policy']}): removed {kept['removed_items']} items "
                         f"({format_size(kept['removed_bytes'])}){last}{free}")
        for note in folder["not_settling"]:
            lines.append(f"  settling {note['key']}: {note['note']}")
        for failed in folder["labels_failed"]:
            lines.append(f"  LABELS FAILED {failed['key']} (image delivered without them): {failed['reason']}")
        for t in folder["targets"]:
            age = "" if t["oldest_pending_seconds"] is None else f", oldest pending {t['oldest_pending_seconds']:.0f}s"
            lines.append(f"  -> {t['target']}: {t['delivered']} delivered, {t['pending']} pending, "
                         f"{t['failed']} failed{age}")
            for failed in t["failed_items"]:
                lines.append(f"     FAILED {failed['key']}: {failed['reason']}")
            if t["failed"] > len(t["failed_items"]):
                lines.append(f"     ... and {t['failed'] - len(t['failed_items'])} more (status --json --all)")
            for note in t["not_representable"]:
                lines.append(f"     NOTE {note['key']}: {note['note']}")
    for t in status["targets"]:
        state = f"PAUSED: {t['paused']}" if t["paused"] else "ok"
        if t.get("paused_since"):
            state += f" (since {t['paused_since']}; `syncd resume {t['target']}`)"
        lines.append(f"target {t['target']} ({t['platform']}): {state}; last success {t['last_success'] or 'never'}"
                     + (f"; last error {t['last_error_at']}: {t['last_error']}" if t["last_error"] else "")
                     + _rate_text(t))
    return "\n".join(lines)


def _rate_text(target: dict[str, Any]) -> str:
    """``; rate 1.3/s (slowed by 429 at 12:03:04Z to 0.93/s)``, ``; rate unlimited``, or nothing
    when no daemon recorded it yet."""
    reason = target.get("rate_reason")
    if not reason:
        return ""
    rate = target.get("rate")
    if rate is None or reason.startswith("configured limit"):
        return f"; rate {reason}"
    return f"; rate {rate:g}/s ({reason})"
