"""Drive the real ``syncd`` process in tests: configs, ``syncd once``, ``syncd run``, SIGKILL.

    config = write_config(tmp_path, {"ds": {"platform": "nucleus", ...}}, env_key="...")
    proc = DaemonProcess(config, env={"NUCLEUS_API_KEY": "k"}).start()
    wait_for(lambda: emulator_has_everything(), timeout=60)
    proc.kill()          # SIGKILL, no cleanup at all
    proc.start()         # recovers from the journal
    proc.stop()          # SIGTERM, graceful; asserts exit code 0
    result = run_once(config, env=...)   # CompletedProcess of `syncd once`
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(
    tmp_path: Path,
    targets: dict[str, dict[str, Any]],
    *,
    folders: list[dict[str, Any]] | None = None,
    daemon: dict[str, Any] | None = None,
    name: str = "syncd.toml",
) -> Path:
    """Write a configuration file; by default one folder ``inbox`` feeding every target."""
    daemon_table = {"state_dir": "state", "settle_seconds": 0.3, "retry_base_seconds": 0.2,
                    "retry_max_seconds": 2.0, "target_recheck_seconds": 1.0, "shutdown_seconds": 5.0}
    daemon_table.update(daemon or {})
    folders = folders or [{"path": "inbox", "targets": list(targets)}]
    lines = ["[daemon]"] + [f"{k} = {_toml_value(v)}" for k, v in daemon_table.items()]
    for folder in folders:
        lines += ["", "[[folders]]"] + [f"{k} = {_toml_value(v)}" for k, v in folder.items()]
    for target, table in targets.items():
        lines += ["", f"[targets.{target}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    for folder in folders:
        (tmp_path / folder["path"]).mkdir(parents=True, exist_ok=True)
    return path


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SYNCD_CONFIG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_once(config: Path, *, env: dict[str, str] | None = None, timeout: float = 180,
             args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``syncd once --config CONFIG``; returns the CompletedProcess (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "syncd", "once", "--config", str(config), *args],
        env=_env(env), capture_output=True, text=True, timeout=timeout, cwd=config.parent,
    )


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syncd", *args], env=_env(env), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


class DaemonProcess:
    """A real ``syncd run`` child process; logs go to ``<config dir>/daemon-N.log``."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None):
        self.config = config
        self.env = _env(env)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    def start(self) -> "DaemonProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log_path = self.config.parent / f"daemon-{self.starts}.log"
        self.log_paths.append(log_path)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.config.parent,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths if p.exists())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.running:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(predicate, *, timeout: float = 60, interval: float = 0.1, message: str = "condition", explain=None):
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``
    (with what ``explain()`` says, e.g. the daemon's log, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)
