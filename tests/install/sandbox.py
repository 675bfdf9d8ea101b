"""A throwaway machine for running installation steps as root, verbatim, without touching the host.

``Machine`` is a mount namespace in which /etc, /opt and /srv are overlays on the host's: users,
groups, units and installed files written there vanish with it (no userdel needed), while the
host's Python, pip configuration and package mirrors stay visible. Commands run in a root shell
with a fresh machine's PATH, and ``machine.path("/srv/x")`` reads the machine's files from outside.

What needs systemd as PID 1 is stood in for, and only that: ``systemctl`` and ``apt-get`` on PATH
are shims that log their arguments; ``Services.apply`` then does what systemd would (verify the
unit, start ``ExecStart=`` as ``User=`` with ``UMask=`` and wait for READY=1 like Type=notify,
stop with SIGTERM). ``apt-get install`` only checks that the package is already installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.daemon_harness import REPO

FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OVERLAID = ("/etc", "/opt", "/srv")
# The machine's network settings (proxies, pip mirrors, CA bundles) pass into the root shell.
PASSED = re.compile(r"^(PIP_\w+|\w+_proxy|\w+_PROXY|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE)$")

APT_GET = """#!/bin/sh
echo "apt-get $*" >> "{log}"
[ "$1" = install ] || {{ echo "apt-get shim: only 'install' is known" >&2; exit 1; }}
shift
for package in "$@"; do
  case "$package" in -*) continue;; esac
  dpkg -s "$package" >/dev/null 2>&1 && continue
  echo "apt-get shim: $package is not installed on this machine" >&2
  exit 1
done
"""
SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
"""


def copy_checkout(destination: Path) -> Path:
    """The repository's files as a user's checkout has them (tracked and new, not ignored)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = REPO / name
            if source.is_file():
                (destination / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination / name)
    else:  # not a git checkout: everything but venvs, caches and build output
        shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache", "out"))
    return destination


class Machine:
    """See the module docstring. Use as a context manager."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="syncd-machine-"))
        self.base.chmod(0o755)  # the service user reaches the notify socket in here
        self.shims = self.base / "shims"
        self.shims.mkdir()
        self.systemctl_log = self.base / "systemctl.log"
        self.systemctl_log.touch()
        self._seen = 0
        for name, text in (("apt-get", APT_GET), ("systemctl", SYSTEMCTL)):
            shim = self.shims / name
            shim.write_text(text.format(log=self.base / f"{name}.log" if name != "systemctl" else self.systemctl_log))
            shim.chmod(0o755)
        layers = self.base / "layers"
        layers.mkdir()
        mounts = [f"mount -t tmpfs syncd-machine {layers}"]
        for directory in OVERLAID:
            up, work = layers / f"{directory.strip('/')}.up", layers / f"{directory.strip('/')}.work"
            mounts += [f"mkdir {up} {work}",
                       f"mount -t overlay overlay -o lowerdir={directory},upperdir={up},workdir={work} {directory}"]
        script = " && ".join(mounts) + " && echo ready && exec sleep infinity"
        self._holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self._holder.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"cannot make the machine: {self._holder.stderr.read()}")
        self.pid = self._holder.pid

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def path(self, path: str) -> Path:
        """``path`` as the machine sees it, readable from outside."""
        return Path(f"/proc/{self.pid}/root{path}")

    def enter(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the machine, in a clean root environment with a fresh PATH."""
        env = [f"{k}={v}" for k, v in os.environ.items() if PASSED.match(k)]
        return ["nsenter", "-t", str(self.pid), "-m", "--", "env", "-i", f"PATH={self.shims}:{FRESH_PATH}",
                "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C.UTF-8", "SHELL=/bin/bash", *env, *argv]

    def run(self, command: str, *, cwd: Path | str = "/", timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a shell command line as root in the machine."""
        script = f"cd {shlex.quote(str(cwd))} && {command}"
        return subprocess.run(self.enter(["bash", "-euo", "pipefail", "-c", script]),
                              capture_output=True, text=True, timeout=timeout)

    def systemctl_calls(self) -> list[list[str]]:
        """The systemctl command lines logged since the last call."""
        lines = self.systemctl_log.read_text().splitlines()
        new, self._seen = lines[self._seen:], len(lines)
        return [line.split() for line in new]


class Services:
    """What systemd would do for the logged systemctl calls (see the module docstring)."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.running: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.running):
            self.stop(name)

    def apply(self, calls: list[list[str]]) -> None:
        for call in calls:
            verb, args = call[0], [a for a in call[1:] if not a.startswith("-")]
            names = [a.removesuffix(".service") for a in args]
            if verb == "daemon-reload":
                continue
            if verb == "enable" and "--now" in call or verb == "start":
                for name in names:
                    self.start(name)
            elif verb == "restart":
                for name in names:
                    self.stop(name)
                    self.start(name)
            elif verb == "stop":
                for name in names:
                    self.stop(name)
            elif verb not in ("enable", "status"):
                raise AssertionError(f"the systemctl shim does not know: systemctl {' '.join(call)}")

    def unit(self, name: str) -> Path:
        return self.machine.path(f"/etc/systemd/system/{name}.service")

    def verify(self, name: str) -> None:
        command = ["systemd-analyze", "verify", f"/etc/systemd/system/{name}.service"]
        result = subprocess.run(self.machine.enter(command), capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr.strip(), f"systemd-analyze verify {name}: {result.stderr}"

    def start(self, name: str, timeout: float = 60) -> None:
        """Start ``name`` as systemd starts a Type=notify service: return once it sent READY=1."""
        self.verify(name)
        service = _service_section(self.unit(name).read_text())
        argv = [_unescape(word) for word in shlex.split(service["ExecStart"])]
        user = service.get("User", "root")
        notify_dir = Path(tempfile.mkdtemp(prefix="notify-", dir=self.machine.base))
        notify_dir.chmod(0o755)
        address = str(notify_dir / "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        os.chmod(address, 0o666)
        log = self.machine.base / f"{name}.log"
        self.logs[name] = log
        # setpriv: User= with its groups, no new privileges, no capabilities; UMask= through sh.
        command = ["setpriv", f"--reuid={user}", f"--regid={service.get('Group', user)}", "--init-groups",
                   "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
                   "env", f"NOTIFY_SOCKET={address}", f"USER={user}", f"LOGNAME={user}", "HOME=/",
                   "sh", "-c", f"umask {service.get('UMask', '0022')} && exec \"$@\"", "sh", *argv]
        with log.open("ab") as out:
            process = subprocess.Popen(self.machine.enter(command), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        listener.settimeout(0.5)
        try:
            while True:
                try:
                    if b"READY=1" in listener.recv(4096):
                        break
                except socket.timeout:
                    pass
                assert process.poll() is None, f"{name} exited with {process.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"{name} sent no READY=1 in {timeout} s:\n{log.read_text()}"
        finally:
            listener.close()
        self.running[name] = process

    def stop(self, name: str, timeout: float = 45) -> int:
        """SIGTERM, as systemd stops it; the exit status (systemd counts 0 as a clean stop)."""
        process = self.running.pop(name)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise


def _service_section(text: str) -> dict[str, str]:
    values, section = {}, None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value
    return values


def _unescape(word: str) -> str:
    """Undo the unit-file escapes syncd writes: %% and $$."""
    return word.replace("%%", "%").replace("$$", "$")
