"""The scaffolding the platform end-to-end tests share: `syncd run` as a real process against
an emulator that injects faults on a share of the requests, killed with SIGKILL mid-run,
edited while it is down, restarted, and then required to converge and to leave an idle
journal. Each test keeps what is its own: the items, the edits, what "converged" means and
what the emulator must have seen.

    with FaultyRun(config, env, emulator) as run:
        run.kill_when(lambda: ..., message="some deliveries")
        ...  # edits while the daemon is down
        run.converge(converged)
    ...  # assertions on the emulator, run.status(), run.daemon.logs()
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_harness import DaemonProcess, run_cli, wait_for

COUNT = 30  # items per end-to-end test
FAULTS = ("500", "503", "429", "reset", "lost_reply", "slow")
FAULT_RATE = 0.2  # about one request in five


class FaultyRun:
    """A daemon process under random faults (``FAULT_RATE`` of ``FAULTS``, ``Retry-After: 1``),
    started on entering; killed on leaving if it still runs (a failed test leaves no process)."""

    def __init__(self, config: Path, env: dict[str, str], emulator: Any):
        self.config = config
        self.env = env
        self.emulator = emulator
        self.daemon = DaemonProcess(config, env=env)

    def __enter__(self) -> "FaultyRun":
        self.emulator.faults.retry_after = 1
        self.emulator.faults.set_rate(FAULT_RATE, FAULTS)
        self.daemon.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.daemon.running:
            self.daemon.proc.kill()

    def status(self) -> dict:
        """The (only) target's entry of `syncd status --json`."""
        result = run_cli("status", "--json", "--config", str(self.config), env=self.env)
        return json.loads(result.stdout)["folders"][0]["targets"][0]

    def kill_when(self, predicate: Callable[[], Any], *, message: str, timeout: float = 60, **wait) -> None:
        """Wait until ``predicate()`` (some deliveries made), then SIGKILL the daemon."""
        wait_for(predicate, timeout=timeout, message=message, **wait)
        self.daemon.kill()

    def converge(self, converged: Callable[[], bool], *, timeout: float = 120,
                 explain: Callable[[], str] | None = None) -> None:
        """Restart the daemon; wait until ``converged()`` (``explain()`` says what lags when
        it does not); then, faults off, until the journal is idle: the remote side can be
        right before the journal says so (a lost reply is retried, then adopted), so the
        daemon finishes its bookkeeping; finally stop it, which must exit 0."""
        self.daemon.start()
        try:
            wait_for(converged, timeout=timeout, interval=0.3, message="convergence")
        except AssertionError:
            if explain is None:
                raise
            raise AssertionError(f"no convergence: {explain()}") from None
        self.emulator.faults.set_rate(0.0)
        wait_for(lambda: self.status()["pending"] == 0 and self.status()["in_flight"] == 0, timeout=60, interval=0.3,
                 message="an idle journal")
        assert self.daemon.stop() == 0
