"""Running out of inotify watches: a clear message with the sysctl fix, and polling instead.

The limit is lowered for real, inside a user namespace of our own (`unshare -U -r` and
/proc/sys/user/max_inotify_watches), so nothing else on the machine is affected.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from tests.daemon_harness import _env, wait_for, write_config
from tests.helpers import image_bytes


def test_watch_limit_reached_falls_back_to_polling_with_the_fix(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          folders=[{"path": "inbox", "targets": ["local"], "poll_seconds": 0.5}])
    for i in range(12):
        (tmp_path / "inbox" / f"d{i}").mkdir()
    inner = (f"echo 4 > /proc/sys/user/max_inotify_watches && "
             f"exec {shlex.quote(sys.executable)} -m syncd run --config {shlex.quote(str(config))}")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "-U", "-r", "sh", "-c", inner], env=_env(None), stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: "watching" in log.read_text(), timeout=20, message="daemon start")
        text = log.read_text()
        assert "inotify watch limit is reached" in text and "sysctl fs.inotify.max_user_watches" in text
        (tmp_path / "inbox" / "d11" / "deep.png").write_bytes(image_bytes())
        wait_for(lambda: (tmp_path / "synced" / "d11" / "deep.json").exists(), timeout=20,
                 message="a file in an unwatchable subdirectory delivered by polling")
        assert json.loads((tmp_path / "synced" / "d11" / "deep.json").read_text())["key"] == "d11/deep"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
