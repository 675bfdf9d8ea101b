"""A daemon at a platform's rate limit (real `syncd run`, real HTTP, the emulator's shared
rate-limit knob): everything is delivered, throttled items are not backed off (no attempt
counted), and status and metrics say the target's rate and why."""

from __future__ import annotations

import json
import re
import sqlite3

from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.emulators.nucleus import NucleusEmulator
from tests.helpers import write_item

COUNT = 12


def test_a_throttled_target_slows_down_and_says_so(tmp_path):
    with NucleusEmulator(seed=5) as emulator:
        dataset_id = emulator.add_dataset("frames")
        emulator.rate_limit.set(4, retry_after=1)  # 4 requests/s for everyone, 429 beyond
        env = {"NUCLEUS_API_KEY": emulator.api_key}
        config = write_config(tmp_path, {"nuc": {
            "platform": "nucleus", "dataset_id": dataset_id, "base_url": emulator.endpoint, "timeout": 5.0,
            "workers": 4, "job_poll_interval": 0.2}}, daemon={"rescan_seconds": 60})
        config.write_text(config.read_text() + '\n[metrics]\ntextfile = "metrics/syncd.prom"\ninterval_seconds = 0.2\n')
        for i in range(COUNT):
            write_item(tmp_path / "inbox", f"f{i:02d}", metadata={"i": i}, seed=i)

        def status() -> dict | None:
            result = run_cli("status", "--json", "--config", str(config), env=env)
            return json.loads(result.stdout) if result.returncode == 0 else None  # 3: no journal yet

        def delivered() -> bool:
            report = status()
            return report is not None and report["folders"][0]["targets"][0]["delivered"] == COUNT

        with DaemonProcess(config, env=env) as daemon:
            wait_for(delivered, timeout=120, interval=0.5, message="every item delivered")
            assert emulator.rate_limit.counts()["refused"] > 0  # it was throttled: unlimited at first
            textfile = tmp_path / "metrics" / "syncd.prom"
            wait_for(lambda: textfile.exists() and 'state="acked"} 12' in textfile.read_text(), timeout=20,
                     message="metrics with every delivery acked")
            metrics = textfile.read_text()
            report = status()
            text = run_cli("status", "--config", str(config), env=env).stdout
            assert daemon.stop() == 0

    target = report["targets"][0]
    assert 0 < target["rate"] < 40, target  # adapted: a finite rate
    assert re.fullmatch(r"slowed by 429 at \d\d:\d\d:\d\dZ to [0-9.]+/s", target["rate_reason"]), target
    assert f"rate {target['rate']:g}/s (slowed by 429 at " in text
    rate = re.search(r'^syncd_target_rate\{target="nuc"\} (\S+)$', metrics, re.M)
    assert rate and 0 < float(rate.group(1)) < 40, metrics
    throttled = re.search(r'^syncd_target_throttled_total\{target="nuc"\} (\d+)$', metrics, re.M)
    assert throttled and int(throttled.group(1)) >= 1, metrics
    # A throttle is about the target: no item was backed off or had an attempt counted for it.
    with sqlite3.connect(tmp_path / "state" / "syncd.db") as db:
        attempts = [n for (n,) in db.execute("SELECT attempts FROM deliveries")]
    assert attempts == [0] * COUNT
    assert "retrying" not in daemon.logs()
