"""`syncd pause TARGET` / `syncd resume TARGET`: the operator holds a target's deliveries.

In process (tick by tick, the journal flag and the wake-up) and against a real `syncd run`
told by SIGUSR1: it holds new deliveries at once, `status` says "paused by operator", the
pause survives a restart, and `resume` delivers what waited.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

from syncd import control, status
from syncd.delivery import HELD
from tests.conftest import ScriptedTarget, drive
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import write_item


def test_a_paused_target_gets_nothing_until_resumed_and_others_go_on(make_daemon, inbox):
    held, other = ScriptedTarget("held"), ScriptedTarget("other")
    daemon = make_daemon({"held": held, "other": other})
    result = control.set_paused(daemon.config, "held", True)
    assert result.changed and result.pid is None  # this process holds the lock: nothing to signal
    daemon.control.set()
    for i in range(3):
        write_item(inbox, f"f{i}", metadata={"i": i})
    daemon.scan(time.time())
    drive(daemon)
    assert sorted(other.items) == ["f0", "f1", "f2"] and held.sent == []
    data = status.collect(daemon.config)
    by_name = {t["target"]: t for t in data["targets"]}
    assert by_name["held"]["paused"] == "paused by operator" and by_name["held"]["paused_by_operator"]
    assert by_name["held"]["paused_since"] is not None
    assert by_name["other"]["paused"] is None and not by_name["other"]["paused_by_operator"]
    assert "PAUSED: paused by operator (since " in status.render(data)
    assert daemon.store.paused_targets() == {"held": "paused by operator"}

    assert not control.set_paused(daemon.config, "held", True).changed  # already paused
    assert control.set_paused(daemon.config, "held", False).changed
    daemon.control.set()
    drive(daemon)
    assert sorted(held.items) == ["f0", "f1", "f2"]
    assert daemon.store.paused_targets() == {}


def test_a_batch_handed_over_but_not_sent_yet_is_held_without_counting_an_attempt(make_daemon, inbox):
    target = ScriptedTarget("fake", workers=1)
    target.gate = threading.Event()
    write_item(inbox, "first")
    write_item(inbox, "second", seed=1)
    daemon = make_daemon({"fake": target})
    now = time.time() + 3600
    daemon.tick(now)  # both batches handed to the one worker: the first waits at the gate
    assert target.entered.wait(5)
    control.set_paused(daemon.config, "fake", True)
    daemon.control.set()
    daemon.tick(now + 1)  # the pause is read: the queued batch must not leave
    target.gate.set()
    wait_for(lambda: daemon.results.qsize() >= 2, timeout=5, message="both reports")
    daemon.tick(now + 2)
    assert [key for key, _, _ in target.sent] == ["first"]  # the one already on the wire finished
    assert daemon.attempts[("fake", HELD)] == 1
    row = daemon.store.query("SELECT d.state, d.attempts, d.outcome_unknown FROM deliveries d "
                             "JOIN items i ON i.id=d.item_id WHERE i.key='second'")[0]
    assert row == {"state": "pending", "attempts": 0, "outcome_unknown": 0}
    control.set_paused(daemon.config, "fake", False)
    daemon.control.set()
    drive(daemon)
    assert [key for key, _, _ in target.sent] == ["first", "second"]


def test_unknown_target_exits_2_naming_the_known_ones(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"},
                                     "spare": {"platform": "local", "path": "spare"}})
    for verb in ("pause", "resume"):
        result = run_cli(verb, "nope", "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert "unknown target 'nope' (known: local, spare)" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "syncd.db").exists()  # nothing written for a typo


def test_pause_and_resume_a_running_syncd(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                          daemon={"settle_seconds": 0.2, "rescan_seconds": 600})
    inbox = tmp_path / "inbox"
    log_path = tmp_path / "synced" / ".syncd-deliveries.jsonl"

    def delivered() -> Counter:
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        return Counter(json.loads(line)["key"] for line in lines)

    daemon = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        write_item(inbox, "before", old=False)
        wait_for(lambda: delivered() == Counter({"before": 1}), timeout=30, message="first delivery")

        paused = run_cli("pause", "local", "--config", str(config))
        assert paused.returncode == 0, paused.stderr
        assert f"the running syncd (pid {daemon.proc.pid}) holds its deliveries now" in paused.stdout
        # Told by the signal, not by the 30 s re-read: seen at once (5 s allows for a loaded machine).
        wait_for(lambda: "target local paused by operator" in daemon.logs(), timeout=5, message="the pause seen")
        for i in range(3):
            write_item(inbox, f"during{i}", seed=i, old=False)
        time.sleep(2.0)  # settled long ago (0.2 s): nothing may be sent while paused
        assert delivered() == Counter({"before": 1})
        shown = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
        target = shown["targets"][0]
        assert target["paused"] == "paused by operator" and target["paused_by_operator"] is True
        assert shown["folders"][0]["targets"][0]["pending"] == 3
        assert "PAUSED: paused by operator" in run_cli("status", "--config", str(config)).stdout

        assert daemon.stop() == 0  # the pause is in the journal: a restart keeps it
        daemon.start()
        wait_for(lambda: daemon.logs().count("watching") == 2, timeout=30, message="restart")
        assert "target local paused by operator" in daemon.log_paths[-1].read_text()
        time.sleep(1.0)
        assert delivered() == Counter({"before": 1})

        resumed = run_cli("resume", "local", "--config", str(config))
        assert resumed.returncode == 0 and "resumes its deliveries now" in resumed.stdout, resumed.stdout
        wait_for(lambda: len(delivered()) == 4, timeout=5, message="the held items after resume")
        assert set(delivered().values()) == {1}
        assert run_cli("resume", "local", "--config", str(config)).stdout.startswith(
            "target local was already not paused by operator")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()


def test_pause_without_a_running_daemon_applies_at_the_next_start(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    paused = run_cli("pause", "local", "--config", str(config))
    assert paused.returncode == 0 and "no syncd is running: it stays paused when one starts" in paused.stdout
    write_item(tmp_path / "inbox", "a")
    once = run_cli("once", "--config", str(config), "--max-wait", "20", cwd=tmp_path)
    assert once.returncode == 1, once.stdout + once.stderr
    assert "PAUSED target local: paused by operator" in once.stdout
    assert not (tmp_path / "synced" / "a.png").exists()
