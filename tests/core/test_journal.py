"""The journal file: journals made by earlier syncd versions open and keep working, and no
SQL lives outside ``syncd.journal``.

``TODAYS_SCHEMA`` is the schema of a journal made by syncd before the journal package
existed (schema version 4), copied from such a journal's ``sqlite_master``. It is frozen
here on purpose: if a migration already shipped were edited in place, a fresh journal and
an upgraded one would differ, and these tests say so.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from syncd import status
from syncd.config import load_config
from syncd.journal.queries import JournalReader
from syncd.journal.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION, connect
from syncd.journal.store import Store
from tests.daemon_harness import REPO, write_config

TODAYS_VERSION = 4
TODAYS_SCHEMA = """
CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        folder TEXT NOT NULL,
        key TEXT NOT NULL,
        image TEXT NOT NULL,
        sidecar TEXT,
        mask TEXT,
        stat_sig TEXT,
        version TEXT,
        state TEXT NOT NULL DEFAULT 'settling',   -- settling | ready | invalid | gone | deleted
        error TEXT,
        first_seen REAL NOT NULL,
        updated_at REAL NOT NULL, label_error TEXT,
        UNIQUE (folder, key)
    );
CREATE INDEX items_state ON items (state);
CREATE TABLE deliveries (
        item_id INTEGER NOT NULL REFERENCES items (id),
        target TEXT NOT NULL,
        want_version TEXT,
        acked_version TEXT,
        inflight_version TEXT,
        failed_version TEXT,
        state TEXT NOT NULL,                      -- waiting | pending | in_flight | acked | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        outcome_unknown INTEGER NOT NULL DEFAULT 0,
        receipt TEXT,
        error TEXT,
        pending_since REAL,
        updated_at REAL NOT NULL,
        acked_at REAL, note TEXT,
        PRIMARY KEY (item_id, target)
    );
CREATE INDEX deliveries_due ON deliveries (target, state, next_attempt_at);
CREATE TABLE targets (
        name TEXT PRIMARY KEY,
        paused_reason TEXT,
        last_success REAL,
        last_error TEXT,
        last_error_at REAL
    );
CREATE INDEX items_folder_state ON items (folder, state);
CREATE INDEX deliveries_state ON deliveries (state);
CREATE TABLE scanned_dirs (
        folder TEXT NOT NULL,
        dir TEXT NOT NULL,              -- absolute path with a trailing '/', as rtrim() below gives it
        digest TEXT NOT NULL,
        items INTEGER NOT NULL,
        PRIMARY KEY (folder, dir)
    );
CREATE TRIGGER items_scanned_insert AFTER INSERT ON items BEGIN
        DELETE FROM scanned_dirs WHERE folder=NEW.folder AND dir=rtrim(NEW.image, replace(NEW.image, '/', ''));
    END;
CREATE TRIGGER items_scanned_update AFTER UPDATE OF state, stat_sig, image ON items
    WHEN NEW.state IS NOT OLD.state OR NEW.stat_sig IS NOT OLD.stat_sig OR NEW.image IS NOT OLD.image BEGIN
        DELETE FROM scanned_dirs WHERE folder=OLD.folder AND dir=rtrim(OLD.image, replace(OLD.image, '/', ''));
        DELETE FROM scanned_dirs WHERE folder=NEW.folder AND dir=rtrim(NEW.image, replace(NEW.image, '/', ''));
    END;
CREATE INDEX deliveries_noted ON deliveries (target) WHERE note IS NOT NULL;
CREATE INDEX items_label_error ON items (folder) WHERE label_error IS NOT NULL;
"""


def schema_of(state_dir: Path) -> set[tuple[str, str, str, str | None]]:
    """Every table, index and trigger of the journal in ``state_dir``, with its SQL."""
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


def fresh_schema(tmp_path: Path) -> set:
    connect(tmp_path / "fresh").close()
    return schema_of(tmp_path / "fresh")


def make_todays_journal(state_dir: Path, folder: str) -> None:
    """A journal as syncd wrote it at schema version 4 (WAL), holding one item of every kind:
    delivered, pending, in flight when the daemon died, failed; a target paused; a digest."""
    state_dir.mkdir(parents=True)
    conn = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(f"BEGIN; {TODAYS_SCHEMA}; PRAGMA user_version={TODAYS_VERSION}; COMMIT;")
    items = [(1, "acked", "v1", "v1", None, None), (2, "pending", "v2", None, None, None),
             (3, "in_flight", "v3", None, "v3", None), (4, "failed", "v4", None, None, "v4")]
    for item_id, state, want, acked, inflight, failed in items:
        conn.execute("INSERT INTO items (id, folder, key, image, stat_sig, version, state, first_seen, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, 'ready', 1, 1)",
                     (item_id, folder, f"cam/k{item_id}", f"{folder}/cam/k{item_id}.png", f"{item_id}:1:1|-|-|-", want))
        conn.execute("INSERT INTO deliveries (item_id, target, want_version, acked_version, inflight_version, "
                     "failed_version, state, attempts, receipt, error, pending_since, updated_at, acked_at) "
                     "VALUES (?, 't', ?, ?, ?, ?, ?, 1, ?, ?, ?, 1, ?)",
                     (item_id, want, acked, inflight, failed, state, '{"remote_id": "r1"}' if acked else None,
                      "refused" if failed else None, None if acked else 1.0, 1.0 if acked else None))
    conn.execute("INSERT INTO targets (name, last_success, paused_reason) VALUES ('t', 1, NULL)")
    conn.execute("INSERT INTO scanned_dirs (folder, dir, digest, items) VALUES (?, ?, 'd', 1)",
                 (folder, f"{folder}/cam/"))
    conn.close()


def test_a_journal_made_before_the_journal_package_opens_and_keeps_working(tmp_path):
    config = load_config(write_config(tmp_path, {"t": {"platform": "local", "path": "out"}}))
    state_dir, folder = config.daemon.state_dir, str(config.folders[0].path)
    make_todays_journal(state_dir, folder)

    store = Store.open(state_dir)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.recover(now=10.0) == 1  # the delivery in flight when it stopped
        due = {d.key: d for d in store.due("t", now=10.0, limit=10)}
        assert sorted(due) == ["cam/k2", "cam/k3"]
        assert due["cam/k3"].outcome_unknown and not due["cam/k2"].outcome_unknown
        assert store.dir_digests(folder) == {f"{folder}/cam/": ("d", 1)}
        assert store.observed_item(folder, "cam/k1") == (1, "1:1:1|-|-|-", "ready")
        # The protocol goes on: intent, ack; a new version of the delivered item.
        store.intend(2, "t", "v2", 11.0)
        store.acked(2, "t", {"remote_id": "r2"}, 12.0)
        assert store.delivery_state(2, "t") == "acked"
        store.settled(1, "v1b", ["t"], 13.0)
        assert [d.key for d in store.due("t", now=14.0, limit=10)] == ["cam/k1", "cam/k3"]
        assert store.fully_acked(2, ["t"]) and not store.fully_acked(1, ["t"])
    finally:
        store.close()

    counts = status.collect(config, now=20.0)["folders"][0]["targets"][0]
    assert (counts["delivered"], counts["pending"], counts["failed"]) == (1, 2, 1)
    assert schema_of(state_dir) == fresh_schema(tmp_path)


def test_a_journal_made_before_the_journal_package_opens_read_only(tmp_path):
    """`syncd status` right after the upgrade, the daemon not restarted yet."""
    make_todays_journal(tmp_path / "state", "/f")
    journal = JournalReader.open_readonly(tmp_path / "state")
    try:
        assert journal.item_counts("/f") == {"ready": 4}
        assert journal.delivery_counts("/f", "t", journal.only_folder("/f")) == {
            "acked": 1, "pending": 1, "in_flight": 1, "failed": 1}
        assert journal.failed_deliveries("/f", "t", 10) == [("cam/k4", "refused")]
        with pytest.raises(sqlite3.OperationalError):  # read-only really
            journal.conn.execute("DELETE FROM items")
    finally:
        journal.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_every_older_schema_version_migrates_to_the_schema_of_a_fresh_journal(tmp_path, version):
    state_dir = tmp_path / "old"
    state_dir.mkdir()
    conn = sqlite3.connect(state_dir / DB_NAME, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:version], start=1):
        conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    conn.close()
    Store.open(state_dir).close()
    assert schema_of(state_dir) == fresh_schema(tmp_path)


def test_todays_schema_is_what_the_migrations_make():
    """The frozen copy above is today's schema: a shipped migration was not edited."""
    fresh = sqlite3.connect(":memory:")
    for script in MIGRATIONS[:TODAYS_VERSION]:
        fresh.executescript(script)
    frozen = sqlite3.connect(":memory:")
    frozen.executescript(TODAYS_SCHEMA)
    query = "SELECT type, name, tbl_name, sql FROM sqlite_master"
    assert set(fresh.execute(query)) == set(frozen.execute(query))


SQL = re.compile(r"""["'](SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|PRAGMA|BEGIN) """)  # not HTTP "DELETE"


def test_no_sql_outside_the_journal_package():
    outside = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "syncd").rglob("*.py"))
               if "journal" not in path.relative_to(REPO / "syncd").parts
               for n, line in enumerate(path.read_text().splitlines(), 1) if SQL.search(line)]
    assert outside == []


def test_check_reports_the_journal_sound_changed_or_damaged(tmp_path):
    """`syncd check` looks at the journal: none yet, sound (with its row counts), a schema
    changed by hand, a file that is not a journal: each is one line that says what to do."""
    from tests.daemon_harness import run_cli
    from tests.helpers import write_item

    config = write_config(tmp_path, {"local": {"platform": "local", "path": "out"}})
    (tmp_path / "inbox").mkdir(exist_ok=True)
    first = run_cli("check", "--config", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "none yet" in first.stdout

    write_item(tmp_path / "inbox", "a")
    assert run_cli("once", "--config", str(config)).returncode == 0
    sound = run_cli("check", "--config", str(config))
    assert sound.returncode == 0, sound.stdout
    assert f"ok (schema {SCHEMA_VERSION}; 1 items, 1 deliveries)" in sound.stdout

    db = tmp_path / "state" / DB_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX deliveries_noted")
    changed = run_cli("check", "--config", str(config))
    assert changed.returncode == 1
    assert "indexes differ" in changed.stdout and "move" in changed.stdout

    db.unlink()
    for extra in ("-wal", "-shm"):
        db.with_name(DB_NAME + extra).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    garbage = run_cli("check", "--config", str(config))
    assert garbage.returncode == 1
    assert "cannot be read" in garbage.stdout and "Traceback" not in garbage.stdout + garbage.stderr
