"""`syncd run` as a real process: live watching, edits, slow writers, SIGKILL mid-burst."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.helpers import image_bytes, mask_bytes


def config_for(tmp_path: Path, **daemon) -> Path:
    return write_config(
        tmp_path, {"local": {"platform": "local", "path": "synced", "log_deliveries": True}},
        daemon={"settle_seconds": 0.4, "rescan_seconds": 30, **daemon},
    )


def deliveries(tmp_path: Path) -> list[dict]:
    log = tmp_path / "synced" / ".syncd-deliveries.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def record(tmp_path: Path, key: str) -> dict | None:
    path = tmp_path / "synced" / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_dropped_item_appears_and_sidecar_edit_updates_in_place(tmp_path):
    config = config_for(tmp_path)
    inbox = tmp_path / "inbox"
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        (inbox / "cam1").mkdir()
        (inbox / "class_map.json").write_text(json.dumps({"road": [255, 0, 0]}))
        image = image_bytes(64, 48, seed=5)
        (inbox / "cam1" / "frame_0001.json").write_text(json.dumps({"metadata": {"site": "A"}}))
        (inbox / "cam1" / "frame_0001.mask.png").write_bytes(mask_bytes(64, 48))
        (inbox / "cam1" / "frame_0001.png").write_bytes(image)
        started = time.monotonic()
        wait_for(lambda: record(tmp_path, "cam1/frame_0001"), timeout=15, message="first delivery")
        assert time.monotonic() - started < 10
        assert (tmp_path / "synced" / "cam1" / "frame_0001.png").read_bytes() == image
        assert (tmp_path / "synced" / "cam1" / "frame_0001.mask.png").read_bytes() == mask_bytes(64, 48)
        assert record(tmp_path, "cam1/frame_0001")["metadata"] == {"site": "A"}

        # An editor saves through a temporary file and a rename.
        tmp = inbox / "cam1" / ".frame_0001.json.swp"
        tmp.write_text(json.dumps({"metadata": {"site": "B"}}))
        os.replace(tmp, inbox / "cam1" / "frame_0001.json")
        wait_for(lambda: record(tmp_path, "cam1/frame_0001")["metadata"] == {"site": "B"}, timeout=15, message="update")
        assert [d["key"] for d in deliveries(tmp_path)] == ["cam1/frame_0001"] * 2
        assert sorted(p.name for p in (tmp_path / "synced" / "cam1").iterdir()) == [
            "frame_0001.json", "frame_0001.mask.png", "frame_0001.png"]
        assert daemon.stop() == 0  # SIGTERM drains and exits 0


def test_slow_writer_is_never_delivered_half_written(tmp_path):
    config = config_for(tmp_path)
    inbox = tmp_path / "inbox"
    data = image_bytes(400, 300, seed=9)
    with DaemonProcess(config) as daemon:
        wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        with open(inbox / "slow.png", "wb") as handle:
            for start in range(0, len(data), len(data) // 10 + 1):
                handle.write(data[start:start + len(data) // 10 + 1])
                handle.flush()
                time.sleep(0.15)
        # A copy moved in whole, and a burst of small files, alongside.
        (inbox / ".incoming.png").write_bytes(image_bytes(seed=1))
        os.replace(inbox / ".incoming.png", inbox / "moved.png")
        wait_for(lambda: record(tmp_path, "slow") and record(tmp_path, "moved"), timeout=20, message="deliveries")
        assert (tmp_path / "synced" / "slow.png").read_bytes() == data
        assert Counter(d["key"] for d in deliveries(tmp_path)) == {"slow": 1, "moved": 1}
        daemon.stop()


def test_sigkill_mid_burst_converges_without_duplicates(tmp_path):
    config = config_for(tmp_path)
    inbox = tmp_path / "inbox"
    count = 240
    daemon = DaemonProcess(config).start()
    try:
        wait_for(lambda: "watching" in daemon.logs(), timeout=20, message="daemon start")
        for i in range(count):
            directory = inbox / f"burst{i % 4}"
            directory.mkdir(exist_ok=True)
            (directory / f"img{i:04d}.json").write_text(json.dumps({"metadata": {"i": i}}))
            (directory / f"img{i:04d}.png").write_bytes(image_bytes(seed=i))
        wait_for(lambda: len(deliveries(tmp_path)) >= 40, timeout=60, message="some deliveries")
        daemon.kill()
        done_before_kill = len(deliveries(tmp_path))
        assert done_before_kill < count, "the kill came too late to test anything"
        daemon.start()
        try:
            wait_for(lambda: all(record(tmp_path, f"burst{i % 4}/img{i:04d}") for i in range(count)), timeout=240,
                     message="convergence")
        except AssertionError:
            missing = {f"burst{i % 4}/img{i:04d}" for i in range(count)
                       if not record(tmp_path, f"burst{i % 4}/img{i:04d}")}
            raise AssertionError(f"not delivered: {sorted(missing)[:10]}\n" + daemon.logs()[-4000:]) from None
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.proc.kill()
    pairs = Counter((d["key"], d["version"]) for d in deliveries(tmp_path))
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]
    for i in range(count):
        key = f"burst{i % 4}/img{i:04d}"
        assert (tmp_path / "synced" / f"{key}.png").read_bytes() == image_bytes(seed=i)
        assert record(tmp_path, key)["metadata"] == {"i": i}
    leftovers = [p for p in (tmp_path / "synced").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    status = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    assert status["folders"][0]["targets"][0]["delivered"] == count
    assert status["folders"][0]["targets"][0]["pending"] == 0
