"""Bad input (tests/corpus.py: corrupt, truncated and disguised images, decompression bombs,
empty files, hostile JSON, path tricks in names, symlinks out of the folder, unreadable and
special files, bad labels and masks) fed to a running `syncd run`: each item gets a clear
per-item error in `syncd status`, the daemon stays up, and every good item beside them is
delivered once. Bad labels and masks do not hold the image back: it is delivered without
them and the reason is listed per item (``labels_failed``).

As root the daemon runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so a mode-000 file is
unreadable to it as it would be to the `syncd` service user.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Event

from tests.conftest import ScriptedTarget, drive
from tests.corpus import BAD, EXTRA_FAILED, LABEL_CORPUS, MAX_PIXELS, build_corpus, write_good, write_outside_tree
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import age_files, image_bytes, write_item

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_file_capabilities() -> None:
    """In the child before exec: root keeps its uid but obeys file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class UnprivilegedDaemon(DaemonProcess):
    def start(self) -> "UnprivilegedDaemon":
        self.starts += 1
        log_path = self.config.parent / f"daemon-{self.starts}.log"
        self.log_paths.append(log_path)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.config.parent,
            preexec_fn=_drop_file_capabilities if os.geteuid() == 0 else None,
        )
        return self


def full_status(config: Path) -> dict:
    result = run_cli("status", "--json", "--all", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["folders"][0]


def status(config: Path) -> dict:
    return full_status(config)["targets"][0]


def test_bad_input_corpus_gets_clear_errors_and_good_items_are_delivered(tmp_path):
    corpus = build_corpus()
    assert len({entry.kind for entry in corpus + LABEL_CORPUS}) == len(corpus) + len(LABEL_CORPUS)
    assert len(corpus) + len(LABEL_CORPUS) >= 25
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
                          daemon={"settle_seconds": 0.3, "rescan_seconds": 30, "max_image_pixels": MAX_PIXELS})
    inbox = tmp_path / "inbox"
    expected = {entry.key: entry.expect for entry in corpus} | EXTRA_FAILED
    # Half the corpus is there at start-up (found by the first scan), half arrives while
    # the daemon watches (found by events).
    labelled = {entry.key: entry.expect for entry in LABEL_CORPUS}
    half = len(corpus) // 2
    for entry in corpus[:half] + LABEL_CORPUS[::2]:
        entry.write(inbox)
    good = write_good(inbox)
    write_outside_tree(inbox)
    daemon = UnprivilegedDaemon(config)
    try:
        daemon.start()
        wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        for entry in corpus[half:] + LABEL_CORPUS[1::2]:
            entry.write(inbox)

        def settled() -> bool:
            counts = status(config)
            return counts["failed"] >= len(expected) and counts["delivered"] >= len(good) + len(labelled)

        try:
            wait_for(settled, timeout=60, interval=0.5, message="every item handled")
        except AssertionError:
            raise AssertionError(json.dumps(status(config), indent=1)[:4000] + daemon.logs()[-3000:]) from None
        assert daemon.running
        counts = status(config)
        reasons = {item["key"]: item["reason"] for item in counts["failed_items"]}
        assert sorted(reasons) == sorted(expected), set(reasons) ^ set(expected)
        for key, pattern in expected.items():
            assert re.search(pattern, reasons[key]), (key, pattern, reasons[key])
            assert "\n" not in reasons[key] and "Traceback" not in reasons[key]
        assert counts["delivered"] == len(good) + len(labelled) and counts["pending"] == 0
        label_reasons = {item["key"]: item["reason"] for item in full_status(config)["labels_failed"]}
        assert sorted(label_reasons) == sorted(labelled)
        for key, pattern in labelled.items():
            assert re.search(pattern, label_reasons[key]), (key, pattern, label_reasons[key])
        logs = daemon.logs()
        assert "Traceback" not in logs and "internal error" not in logs
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()
    log_lines = (tmp_path / "synced" / ".syncd-deliveries.jsonl").read_text().splitlines()
    assert Counter(json.loads(line)["key"] for line in log_lines) == Counter(list(good) + list(labelled))
    for key in labelled:  # delivered without the bad labels or mask
        record = json.loads((tmp_path / "synced" / f"{key}.json").read_text())
        assert record["labels"] == [] and record["mask"] is None
    synced = tmp_path / "synced"
    for key, data in good.items():
        [copy] = [p for p in (synced / key).parent.glob(f"{Path(key).name}.*") if p.suffix != ".json"]
        assert copy.read_bytes() == data, key
    # Nothing from the symlinked directory leading outside, nothing of the refused items.
    delivered_files = {p.relative_to(synced).as_posix() for p in synced.rglob("*") if p.is_file()}
    assert not [f for f in delivered_files if f.startswith("linked_dir")]
    refused = [f for f in delivered_files if f.startswith(f"{BAD}/") and not f.startswith(f"{BAD}/ok_")]
    assert not [f for f in refused if not any(f.startswith(key + ".") for key in labelled)]


def test_file_deleted_or_truncated_between_settling_and_sending(make_daemon, inbox):
    """The worker re-reads the files it sends: one deleted meanwhile is never sent (the item is
    gone), one truncated meanwhile is refused with a clear reason and sent once it is whole."""
    target = ScriptedTarget("fake", workers=3)
    target.gate = Event()
    for name in ("a_blocker", "b_shrinking", "c_vanishing"):
        write_item(inbox, name, metadata={"name": name}, seed=len(name))
    daemon = make_daemon({"fake": target})
    daemon.executors["fake"].shutdown(wait=False)
    daemon.executors["fake"] = ThreadPoolExecutor(1)  # three slots, one thread: two reads wait
    now = time.time() + 3600
    daemon.tick(now)
    assert len(daemon.in_flight) == 3 and target.entered.wait(5)
    whole = (inbox / "b_shrinking.png").read_bytes()
    (inbox / "b_shrinking.png").write_bytes(whole[: len(whole) // 2])
    (inbox / "c_vanishing.png").unlink()
    target.gate.set()
    drive(daemon)
    rows = {r["key"]: r for r in daemon.store.query(
        "SELECT i.key, i.state AS item, d.state, d.error FROM deliveries d JOIN items i ON i.id=d.item_id")}
    assert set(target.items) == {"a_blocker"}
    assert "disappeared before it could be read" in rows["c_vanishing"]["error"]
    assert rows["b_shrinking"]["state"] == "failed" and "truncated" in rows["b_shrinking"]["error"]
    daemon.scan(time.time())  # (a watching daemon gets the delete event at once)
    assert daemon.store.query("SELECT state FROM items WHERE key='c_vanishing'")[0]["state"] == "gone"
    (inbox / "b_shrinking.png").write_bytes(image_bytes(seed=99))
    age_files(inbox / "b_shrinking.png")
    daemon.scan(time.time())
    drive(daemon)
    assert target.items["b_shrinking"]["image"] == image_bytes(seed=99)
    assert [key for key, _, _ in target.sent] == ["a_blocker", "b_shrinking"]
