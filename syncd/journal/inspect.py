"""A look at a journal file from outside the daemon: ``syncd check``'s journal line.

This is a cold path (an operator's command, never the daemon's loop), so it uses
sqlite-utils for what sqlite-utils does best: introspection. The journal's tables, columns,
indexes and triggers are compared with those of a fresh journal built from ``MIGRATIONS`` in
memory, which catches a journal from a newer syncd, one whose migration was interrupted by
hand, or a file that is not a journal at all; ``PRAGMA quick_check`` catches damage. The
daemon itself talks to SQLite through ``sqlite3`` only (docs/architecture.md, "The journal",
has the measurements behind that split).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from syncd.journal.schema import DB_NAME, MIGRATIONS


@dataclass
class JournalReport:
    """What ``inspect_journal`` found. ``problems`` empty means the journal is sound."""

    path: Path
    exists: bool
    version: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _shape(db) -> dict[str, object]:
    """Tables with their columns, plus index and trigger names: what two journals must share."""
    return {
        "tables": {name: sorted(db[name].columns_dict) for name in db.table_names()},
        "indexes": sorted(index.name for name in db.table_names() for index in db[name].indexes),
        "triggers": sorted(trigger.name for trigger in db.triggers),
    }


def expected_shape() -> dict[str, object]:
    """The shape of a journal made by this syncd (built in memory from MIGRATIONS)."""
    import sqlite_utils

    conn = sqlite3.connect(":memory:")
    for script in MIGRATIONS:
        conn.executescript(script)
    return _shape(sqlite_utils.Database(conn))


def inspect_journal(state_dir: Path) -> JournalReport:
    """Open ``state_dir``'s journal read-only and report its version, row counts and problems.

    Never raises for a bad file: every problem is a sentence in ``problems`` that says what to do.
    """
    import sqlite_utils

    path = state_dir / DB_NAME
    report = JournalReport(path=path, exists=path.exists())
    if not report.exists:
        return report
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            db = sqlite_utils.Database(conn)
            report.version = conn.execute("PRAGMA user_version").fetchone()[0]
            damage = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
            if damage != ["ok"]:
                report.problems.append(f"damaged ({'; '.join(damage[:3])}): stop syncd, move {path} aside and "
                                       "start again (items are found again by the first scan and re-checked)")
                return report
            if report.version > len(MIGRATIONS):
                report.problems.append(f"made by a newer syncd (schema {report.version}, this one knows "
                                       f"{len(MIGRATIONS)}): upgrade syncd")
                return report
            if report.version == len(MIGRATIONS):
                shape, expected = _shape(db), expected_shape()
                for what in ("tables", "indexes", "triggers"):
                    if shape[what] != expected[what]:
                        report.problems.append(f"its {what} differ from schema {report.version}'s: it was changed "
                                               f"by hand or is not a syncd journal; move {path} aside")
            report.rows = {name: db[name].count for name in ("items", "deliveries") if db[name].exists()}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"cannot be read ({exc}): is it a syncd journal? move {path} aside")
    return report
