"""``status.collect`` counts: the index-only path (one folder in the journal) must agree with
the join over every item (several folders), gone items excluded."""

from __future__ import annotations

from syncd import status
from syncd.config import load_config
from syncd.journal.queries import JournalReader
from syncd.journal.store import Store
from tests.daemon_harness import write_config


def fill(store: Store, folder: str, states: list[tuple[str, str]], target: str = "t") -> None:
    """Items of ``folder`` as ``(item state, delivery state)`` pairs."""
    for n, (item_state, delivery_state) in enumerate(states):
        item_id = store.observe(folder, f"k{n}", f"{folder}/k{n}.png", None, None, f"{n}:1:1|-|-|-", 1.0)
        store.settled(item_id, f"v{n}", [target], 2.0)
        store.conn.execute("UPDATE deliveries SET state=?, error=? WHERE item_id=?",
                           (delivery_state, "bad" if delivery_state == "failed" else None, item_id))
        store.conn.execute("UPDATE items SET state=? WHERE id=?", (item_state, item_id))


STATES = [("ready", "acked")] * 5 + [("ready", "pending")] * 2 + [("ready", "failed")] + \
         [("gone", "acked"), ("gone", "waiting"), ("deleted", "acked")]


def test_counts_with_one_folder_and_with_two_agree(tmp_path):
    config_path = write_config(tmp_path, {"t": {"platform": "local", "path": "out"}},
                               folders=[{"path": "a", "targets": ["t"], "key_prefix": "a"},
                                        {"path": "b", "targets": ["t"], "key_prefix": "b"}])
    config = load_config(config_path)
    a, b = (str(f.path) for f in config.folders)
    store = Store.open(config.daemon.state_dir)
    try:
        fill(store, a, STATES)
        journal = JournalReader.open_readonly(config.daemon.state_dir)
        assert journal.only_folder(a)
        fast = journal.delivery_counts(a, "t", True)
        joined = journal.delivery_counts(a, "t", False)
        assert {k: v for k, v in fast.items() if v} == joined == {"acked": 6, "pending": 2, "failed": 1}
        journal.close()
        fill(store, b, [("ready", "acked")] * 3 + [("gone", "pending")])
    finally:
        store.close()
    data = status.collect(config)
    by_folder = {f["folder"]: f["targets"][0] for f in data["folders"]}
    assert (by_folder[a]["delivered"], by_folder[a]["pending"], by_folder[a]["failed"]) == (6, 2, 1)
    assert (by_folder[b]["delivered"], by_folder[b]["pending"], by_folder[b]["failed"]) == (3, 0, 0)
    assert [f["key"] for f in by_folder[a]["failed_items"]] == ["k7"]


def test_status_on_a_journal_of_an_older_syncd_migrates_it_first(tmp_path):
    """`status` after an upgrade, before the daemon was restarted, still answers."""
    import sqlite3

    from syncd.config import load_config
    from syncd.journal.schema import MIGRATIONS
    from syncd.status import collect
    from tests.daemon_harness import write_config

    config = load_config(write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}}))
    state = config.daemon.state_dir
    state.mkdir(parents=True)
    conn = sqlite3.connect(state / "syncd.db")
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version=1;")
    conn.close()
    status = collect(config)
    assert status["folders"][0]["targets"][0]["delivered"] == 0
