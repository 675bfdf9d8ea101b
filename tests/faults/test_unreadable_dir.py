"""A subdirectory the daemon cannot read (a root-owned ``lost+found`` or any mode-700 folder of
another user, typical of a mounted drive) is skipped with a warning naming it, shown by
``status`` and ``check``, and everything else is delivered.

The tests run as root, which reads everything: syncd runs inside a user namespace of its own
(``unshare -U -r``), where a directory owned by a uid the namespace does not map (4242) is
really unreadable (EACCES from the kernel), while the interpreter and the test's files stay
reachable.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from tests.daemon_harness import _env, run_cli, wait_for, write_config
from tests.helpers import write_item

STRANGER = 4242  # a uid no user namespace of ours maps


def in_namespace(*args: str, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    """``syncd ARGS`` as root of a fresh user namespace (no power over unmapped owners)."""
    return subprocess.run(["unshare", "-U", "-r", sys.executable, "-m", "syncd", *args], env=_env(None), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def unreadable(path) -> None:
    path.mkdir(parents=True)
    write_item(path, "hidden")  # would be an item, if it could be read
    os.chown(path, STRANGER, STRANGER)
    path.chmod(0o700)


def make_folder(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    inbox = tmp_path / "inbox"
    write_item(inbox, "top", metadata={"n": 1})
    write_item(inbox / "cam", "deep", metadata={"n": 2}, seed=1)
    unreadable(inbox / "private")
    unreadable(inbox / "lost+found")  # as mkfs makes it on every ext4 drive
    return config, inbox


def test_once_skips_an_unreadable_directory_with_a_warning_and_delivers_the_rest(tmp_path):
    config, inbox = make_folder(tmp_path)
    result = in_namespace("once", "--config", str(config), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert "inotify" not in result.stderr
    assert (tmp_path / "synced" / "top.json").exists() and (tmp_path / "synced" / "cam" / "deep.json").exists()
    # One line naming it, what it means and what to do; lost+found is ignored (never items).
    assert f"cannot read the directory {inbox / 'private'}: Permission denied" in result.stderr, result.stderr
    assert "lost+found" not in result.stderr
    # once says it: not everything in the folder could be looked at (exit 1, documented).
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"UNREADABLE {inbox / 'private'}" in result.stdout

    status = run_cli("status", "--config", str(config))  # root reads the journal: what the daemon saw
    assert status.returncode == 0, status.stderr
    assert f"UNREADABLE {inbox / 'private'}: Permission denied" in status.stdout
    assert "1 delivered" not in status.stdout and "2 delivered" in status.stdout
    data = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    assert data["folders"][0]["unreadable"] == [{"path": str(inbox / "private"), "reason": "Permission denied"}]

    check = in_namespace("check", "--config", str(config), cwd=tmp_path)
    assert f"cannot read the directory {inbox / 'private'}" in check.stdout, check.stdout
    assert "lost+found" not in check.stdout
    assert check.returncode == 0, check.stdout  # a warning: the daemon runs and delivers the rest

    # Made readable: the next run delivers what it holds and the entry goes away.
    os.chown(inbox / "private", 0, 0)
    result = in_namespace("once", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "synced" / "private" / "hidden.json").exists()
    assert "UNREADABLE" not in run_cli("status", "--config", str(config)).stdout


def test_items_of_a_directory_that_becomes_unreadable_are_not_gone(tmp_path):
    """A directory made unreadable after its items were delivered: they are not 'gone'."""
    config, inbox = make_folder(tmp_path)
    os.chown(inbox / "private", 0, 0)
    assert in_namespace("once", "--config", str(config), cwd=tmp_path).returncode == 0
    os.chown(inbox / "private", STRANGER, STRANGER)
    result = in_namespace("once", "--config", str(config), cwd=tmp_path)
    assert "is gone" not in result.stderr, result.stderr
    status = run_cli("status", "--config", str(config)).stdout
    assert "3 delivered" in status and f"UNREADABLE {inbox / 'private'}" in status


def test_run_starts_without_a_wrong_watch_limit_diagnosis(tmp_path):
    config, inbox = make_folder(tmp_path)
    log = tmp_path / "daemon.log"
    inner = f"exec {shlex.quote(sys.executable)} -m syncd run --config {shlex.quote(str(config))}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "-U", "-r", "sh", "-c", inner], env=_env(None), stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "synced" / "cam" / "deep.json").exists(), timeout=30,
                 message="delivery beside an unreadable directory")
        write_item(inbox / "cam", "live", seed=3, old=False)  # watched by inotify, not polled
        wait_for(lambda: (tmp_path / "synced" / "cam" / "live.json").exists(), timeout=30, message="a live event")
        text = log.read_text()
        assert "inotify watch limit" not in text and "polling" not in text, text
        assert "Traceback" not in text
        assert f"cannot read the directory {inbox / 'private'}" in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
