"""`syncd once --dry-run`: what would be sent, per target; nothing sent, the journal unchanged.

Byte-identical state directory before and after (the journal, its WAL, the lock file); a
fresh state directory is not even created; a dry run next to a running daemon reads a
consistent copy; and its figures are what a real run then delivers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.daemon_harness import DaemonProcess, run_cli, run_once, wait_for, write_config
from tests.helpers import age_files, write_item

POLYGON = {"type": "polygon", "label": "car", "points": [[1, 1], [20, 1], [20, 15]]}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def dry_run(config: Path, *args: str):
    return run_cli("once", "--dry-run", "--config", str(config), *args, cwd=config.parent)


def test_on_a_fresh_state_dir_nothing_is_created_and_nothing_sent(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    inbox = tmp_path / "inbox"
    sizes = 0
    for i in range(4):
        sizes += write_item(inbox / "cam", f"f{i}", metadata={"i": i}, seed=i).stat().st_size
        sizes += (inbox / "cam" / f"f{i}.json").stat().st_size
    result = dry_run(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "dry run: nothing was sent and the journal is unchanged"
    assert "target local (local):" in result.stdout
    assert "would send 4 items" in result.stdout and ": 4 new, 0 updates" in result.stdout
    assert f"{sizes / 1024:.1f} KiB" in result.stdout
    assert not (tmp_path / "state").exists()  # no journal, no lock, not even the directory
    assert not (tmp_path / "synced").exists()


def test_the_journal_is_left_byte_for_byte_and_the_figures_match_the_real_run(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True},
                                     "ei": {"platform": "edgeimpulse", "project_id": 1, "api_key_env": "NO_KEY_SET"}},
                          folders=[{"path": "inbox", "targets": ["local"]},
                                   {"path": "edge", "targets": ["ei"]}])
    inbox = tmp_path / "inbox"
    for i in range(6):
        write_item(inbox, f"f{i}", metadata={"i": i}, seed=i)
    first = run_once(config, args=("--max-wait", "5"))
    assert "6 delivered" in first.stdout, first.stdout + first.stderr
    # Changes since: one update, three new items (one with a polygon), one broken image.
    (inbox / "f1.json").write_text(json.dumps({"metadata": {"i": 1, "edited": True}}))
    age_files(inbox / "f1.json")
    for i in range(6, 9):
        write_item(inbox, f"f{i}", metadata={"i": i}, seed=i, labels=[POLYGON] if i == 6 else None)
    (inbox / "broken.png").write_bytes(b"\x89PNG not really")
    age_files(inbox / "broken.png")
    write_item(tmp_path / "edge", "e0", labels=[POLYGON])
    write_item(tmp_path / "edge", "e1", seed=3)
    state = tmp_path / "state"
    before = tree(state)
    assert "syncd.db" in before
    result = dry_run(config)
    assert result.returncode == 1, result.stdout + result.stderr  # an item would fail, ei is paused
    assert tree(state) == before  # byte for byte: journal, WAL (if any), lock file
    out = result.stdout
    local = out[out.index("target local"):out.index("target ei")]
    assert "would send 4 items" in local and ": 3 new, 1 updates" in local, out
    assert "already delivered: 5" in local
    assert "failed, not sent until their files change or `syncd retry`: 1 items" in local
    assert "broken: " in local and "replace the file" in local
    ei = out[out.index("target ei"):]
    assert "would send 2 items" in ei and ": 2 new, 0 updates" in ei
    assert "edgeimpulse cannot represent: polygon (1 items); those labels are left out" in ei
    # The first run paused ei (its key is not set): the journal says so, the dry run reports it.
    assert "PAUSED: target 'ei': no API key: set the environment variable NO_KEY_SET" in ei
    assert not (tmp_path / "synced" / "f6.png").exists()

    second = run_once(config, args=("--max-wait", "5"))
    records = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()
    assert len(records) == 6 + 4  # exactly what the dry run said for local
    assert "(4 in this run)" in second.stdout


def test_a_dry_run_next_to_a_running_daemon(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"settle_seconds": 0.2})
    daemon = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        assert run_cli("pause", "local", "--config", str(config)).returncode == 0
        wait_for(lambda: "paused by operator" in daemon.logs(), timeout=10, message="the pause")
        for i in range(3):
            write_item(tmp_path / "inbox", f"n{i}", seed=i)
        wait_for(lambda: json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
                 ["folders"][0]["targets"][0]["pending"] == 3, timeout=20, message="settled by the daemon")
        result = dry_run(config)
        assert result.returncode == 1, result.stdout + result.stderr  # paused
        assert "PAUSED: paused by operator" in result.stdout
        assert "would send 3 items" in result.stdout and ": 3 new, 0 updates" in result.stdout
        assert daemon.running
        assert run_cli("resume", "local", "--config", str(config)).returncode == 0
        wait_for(lambda: len(list((tmp_path / "synced").glob("n*.png"))) == 3, timeout=20, message="delivered")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()


def test_a_crashed_daemons_wal_is_read_not_lost(tmp_path):
    """A journal whose last transactions are still in its -wal file (kill -9): the copy holds
    them, and the state directory stays exactly as the crash left it."""
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"settle_seconds": 0.2})
    daemon = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        for i in range(3):
            write_item(tmp_path / "inbox", f"k{i}", seed=i, old=False)
        # Delivered as the journal says (the files alone can be there before the acks are recorded).
        wait_for(lambda: '"delivered": 3' in run_cli("status", "--json", "--config", str(config)).stdout,
                 timeout=20, message="delivered")
    finally:
        daemon.kill()
    state = tmp_path / "state"
    assert (state / "syncd.db-wal").exists() and os.path.getsize(state / "syncd.db-wal") > 0
    before = tree(state)
    write_item(tmp_path / "inbox", "later", seed=9)
    result = dry_run(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would send 1 items" in result.stdout and "already delivered: 3" in result.stdout
    assert tree(state) == before
