"""Modes of what syncd writes (issue 10, item 7): delivered files follow the umask as ``cp``
makes new files (0666 minus the umask, directories 0777 minus it), the metrics textfile is
readable by everyone (node_exporter runs as another user), the journal stays private (0600)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from syncd.fsutil import write_atomic
from tests.daemon_harness import _env, write_config
from tests.helpers import mask_bytes, write_item


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def once_with_umask(config, umask: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syncd", "once", "--config", str(config)], env=_env(None),
                          cwd=config.parent, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.umask(umask))


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_delivered_files_and_directories_follow_the_umask_the_journal_stays_private(tmp_path, umask):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}},
                          daemon={"state_dir": "state"})
    with open(config, "a") as handle:
        handle.write(f'\n[metrics]\ntextfile = "{tmp_path / "metrics" / "syncd.prom"}"\n')
    write_item(tmp_path / "inbox" / "cam", "a", metadata={"n": 1}, mask=mask_bytes())
    (tmp_path / "inbox" / "class_map.json").write_text(json.dumps({"background": [0, 0, 0], "car": [255, 0, 0]}))
    (tmp_path / "metrics").mkdir()
    result = once_with_umask(config, umask)
    assert result.returncode == 0, result.stdout + result.stderr
    synced = tmp_path / "synced"
    for name in ("cam/a.png", "cam/a.mask.png", "cam/a.json"):
        assert mode(synced / name) == 0o666 & ~umask, (name, oct(mode(synced / name)))
    assert mode(synced / "cam") == 0o777 & ~umask
    assert mode(tmp_path / "metrics" / "syncd.prom") == 0o644  # node_exporter reads it as its own user
    for name in ("syncd.db", "syncd.db-wal", "syncd.db-shm"):
        path = tmp_path / "state" / name
        if path.exists():
            assert mode(path) == 0o600, (name, oct(mode(path)))


def test_a_journal_made_readable_by_an_older_syncd_is_made_private(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    assert once_with_umask(config, 0o022).returncode == 0
    db = tmp_path / "state" / "syncd.db"
    db.chmod(0o644)
    assert once_with_umask(config, 0o022).returncode == 0
    assert mode(db) == 0o600


def test_write_atomic_replaces_with_the_umask_mode_or_the_one_asked(tmp_path):
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "f", b"x")
        assert mode(tmp_path / "f") == 0o640
        write_atomic(tmp_path / "g", b"x", mode=0o644)
        assert mode(tmp_path / "g") == 0o644
    finally:
        os.umask(old)
