"""``syncd status``: what is delivered, pending and failed, per folder and target.

Reads the journal read-only with a handful of aggregate queries (indexed), so it answers
quickly on 100k items and can run while the daemon runs.
"""

from __future__ import annotations

import time
from typing import Any

from syncd.config import Config
from syncd.store import connect_readonly

MAX_FAILED_LISTED = 50


def collect(config: Config, *, now: float | None = None, failed_limit: int = MAX_FAILED_LISTED) -> dict[str, Any]:
    """The status as a JSON-serialisable dict (the shape ``status --json`` prints)."""
    now = time.time() if now is None else now
    conn = connect_readonly(config.daemon.state_dir)
    try:
        folders = []
        for folder in config.folders:
            name = str(folder.path)
            item_states = dict(conn.execute("SELECT state, count(*) FROM items WHERE folder=? GROUP BY state", (name,)).fetchall())
            per_target = []
            alone = _only_folder(conn, name)
            for target in folder.targets:
                counts = _delivery_counts(conn, name, target, alone)
                # Driven from the deliveries index (pending and failed rows are few); the
                # unary + keeps SQLite from scanning the folder's 100,000 items instead.
                oldest = conn.execute(
                    "SELECT min(d.pending_since) FROM deliveries d JOIN items i ON i.id=d.item_id "
                    "WHERE d.target=? AND d.state IN ('pending','in_flight') AND +i.folder=? AND +i.state='ready'",
                    (target, name),
                ).fetchone()[0]
                failed = [
                    {"key": key, "reason": error or item_error or "failed"}
                    for key, error, item_error in conn.execute(
                        "SELECT i.key, d.error, i.error FROM deliveries d JOIN items i ON i.id=d.item_id "
                        "WHERE d.target=? AND d.state='failed' AND +i.folder=? ORDER BY i.key LIMIT ?",
                        (target, name, failed_limit),
                    )
                ]
                notes = [
                    {"key": key, "note": note}
                    for key, note in conn.execute(
                        "SELECT i.key, d.note FROM deliveries d INDEXED BY deliveries_noted JOIN items i ON i.id=d.item_id "
                        "WHERE d.target=? AND d.note IS NOT NULL AND +i.folder=? AND i.state NOT IN ('gone') "
                        "ORDER BY i.key LIMIT ?",
                        (target, name, failed_limit),
                    )
                ]
                per_target.append(
                    {
                        "target": target,
                        "delivered": counts.get("acked", 0),
                        "pending": counts.get("pending", 0) + counts.get("in_flight", 0),
                        "in_flight": counts.get("in_flight", 0),
                        "failed": counts.get("failed", 0),
                        "oldest_pending_seconds": None if oldest is None else round(now - oldest, 1),
                        "failed_items": failed,
                        "not_representable": notes,
                    }
                )
            settling = [
                {"key": key, "note": error}
                for key, error in conn.execute(
                    "SELECT key, error FROM items WHERE folder=? AND state='settling' AND error IS NOT NULL LIMIT ?",
                    (name, failed_limit),
                )
            ]
            label_failed = [
                {"key": key, "reason": error}
                for key, error in conn.execute(
                    "SELECT key, label_error FROM items INDEXED BY items_label_error "
                    "WHERE folder=? AND state='ready' AND label_error IS NOT NULL ORDER BY key LIMIT ?",
                    (name, failed_limit),
                )
            ]
            folders.append(
                {
                    "folder": name,
                    "labels_failed": label_failed,
                    "items": sum(n for s, n in item_states.items() if s not in ("gone",)),
                    "settling": item_states.get("settling", 0),
                    "deleted_after_upload": item_states.get("deleted", 0),
                    "not_settling": settling,
                    "targets": per_target,
                }
            )
        targets = []
        for name, settings in config.target_settings.items():
            row = conn.execute(
                "SELECT paused_reason, last_success, last_error, last_error_at FROM targets WHERE name=?", (name,)
            ).fetchone() or (None, None, None, None)
            targets.append(
                {
                    "target": name,
                    "platform": settings.platform,
                    "paused": row[0],
                    "last_success": _iso(row[1]),
                    "last_error": row[2],
                    "last_error_at": _iso(row[3]),
                }
            )
        return {"generated_at": _iso(now), "folders": folders, "targets": targets}
    finally:
        conn.close()


def _only_folder(conn, folder: str) -> bool:
    """True when the journal holds items of ``folder`` only (two index probes)."""
    row = conn.execute("SELECT EXISTS(SELECT 1 FROM items WHERE folder<?) OR EXISTS(SELECT 1 FROM items WHERE folder>?)",
                       (folder, folder)).fetchone()
    return not row[0]


def _delivery_counts(conn, folder: str, target: str, alone: bool) -> dict[str, int]:
    """Deliveries of ``target`` by state for the items of ``folder`` that are not gone.

    When the journal holds no other folder, the counts come from the deliveries index alone
    minus the rows of gone items (few), instead of a join over every item.
    """
    if not alone:
        return dict(conn.execute(
            "SELECT d.state, count(*) FROM deliveries d JOIN items i ON i.id=d.item_id "
            "WHERE i.folder=? AND d.target=? AND i.state NOT IN ('gone') GROUP BY d.state", (folder, target)).fetchall())
    counts = dict(conn.execute("SELECT state, count(*) FROM deliveries WHERE target=? GROUP BY state", (target,)).fetchall())
    for state, gone in conn.execute(
            "SELECT d.state, count(*) FROM items i CROSS JOIN deliveries d ON d.item_id=i.id AND d.target=? "
            "WHERE i.folder=? AND i.state='gone' GROUP BY d.state", (target, folder)):
        counts[state] -= gone
    return counts


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def render(status: dict[str, Any]) -> str:
    """Human-readable status text."""
    lines = []
    for folder in status["folders"]:
        lines.append(f"{folder['folder']}: {folder['items']} items, {folder['settling']} settling"
                     + (f", {folder['deleted_after_upload']} deleted after upload" if folder["deleted_after_upload"] else ""))
        for note in folder["not_settling"]:
            lines.append(f"  settling {note['key']}: {note['note']}")
        for failed in folder["labels_failed"]:
            lines.append(f"  LABELS FAILED {failed['key']} (image delivered without them): {failed['reason']}")
        for t in folder["targets"]:
            age = "" if t["oldest_pending_seconds"] is None else f", oldest pending {t['oldest_pending_seconds']:.0f}s"
            lines.append(f"  -> {t['target']}: {t['delivered']} delivered, {t['pending']} pending, {t['failed']} failed{age}")
            for failed in t["failed_items"]:
                lines.append(f"     FAILED {failed['key']}: {failed['reason']}")
            if t["failed"] > len(t["failed_items"]):
                lines.append(f"     ... and {t['failed'] - len(t['failed_items'])} more (status --json --all)")
            for note in t["not_representable"]:
                lines.append(f"     NOTE {note['key']}: {note['note']}")
    for t in status["targets"]:
        state = f"PAUSED: {t['paused']}" if t["paused"] else "ok"
        lines.append(f"target {t['target']} ({t['platform']}): {state}; last success {t['last_success'] or 'never'}"
                     + (f"; last error {t['last_error_at']}: {t['last_error']}" if t["last_error"] else ""))
    return "\n".join(lines)
