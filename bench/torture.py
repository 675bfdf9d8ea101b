"""Torture run: the real ``syncd run`` process against every platform emulator at once, while
producers write thousands of items in every way producers write them and faults are
injected: SIGKILL of the daemon at random moments, lost replies after commit, 5xx, 429 with
Retry-After, connection resets, slow replies and the network gone for a while.

At the end, for every platform: exactly one remote item per local item, holding the latest
version; no version older than one already written ever reached the platform after it (and
no half-written one at all); nothing pending, in flight or failed in the journal.

    python -m bench.torture                       # the large run (see docs/torture.md)
    python -m bench.torture --items 200 --duration 15 --kills 2 --outages 1   # a small one

tests/core/test_torture.py runs a small configuration through ``run``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.torture_check import history_violations, journal_violations, remote_violations, write_counts
from bench.torture_platforms import PLATFORMS, Platform
from bench.torture_producers import Oracle, Producers, make_plan
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config

# Slow replies are weighted up: a reply slower than settle_seconds is what makes a newer
# version of an item settle while the previous one is still in flight.
FAULT_KINDS = ("500", "502", "503", "429", "reset", "lost_reply") + ("slow",) * 4


@dataclass
class TortureConfig:
    workdir: Path
    items: int = 4000
    duration: float = 90.0  # seconds during which producers write and faults are injected
    platforms: tuple[str, ...] = tuple(PLATFORMS)
    kills: int = 6
    outages: int = 3
    outage_seconds: float = 3.0
    fault_rate: float = 0.15  # fraction of requests answered with a random fault
    workers: int = 4  # per target
    producer_threads: int = 4
    settle_seconds: float = 0.5
    bursts: int = 1
    burst_share: float = 0.3  # of the items, arriving in bursts (all of a burst at once)
    converge_timeout: float = 300.0
    seed: int = 1


@dataclass
class Report:
    config: dict
    violations: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


class Chaos:
    """Kills and restarts the daemon and takes the network away, at seeded random moments."""

    def __init__(self, daemon: DaemonProcess, platforms: list[Platform], config: TortureConfig):
        self.daemon, self.platforms, self.config = daemon, platforms, config
        rng = random.Random(config.seed * 7 + 1)
        span = config.duration
        self.events = sorted([(rng.uniform(0.1, 0.95) * span, "kill") for _ in range(config.kills)]
                             + [(rng.uniform(0.1, 0.8) * span, "outage") for _ in range(config.outages)])
        self.rng = rng
        self.done: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self, started: float) -> None:
        self.started = started
        self.thread.start()

    def _run(self) -> None:
        for at, what in self.events:
            time.sleep(max(0.0, self.started + at - time.monotonic()))
            if what == "kill":
                self.daemon.kill()
                time.sleep(self.rng.uniform(0.05, 1.0))  # producers keep writing meanwhile
                self.daemon.start()
            else:
                threading.Thread(target=self._outage, daemon=True).start()
            self.done.append((round(time.monotonic() - self.started, 2), what))

    def _outage(self) -> None:
        emulators = [p for p in self.platforms if p.faults is not None]
        for platform in emulators:
            platform.faults.outage(True)
        time.sleep(self.config.outage_seconds)
        for platform in emulators:
            platform.faults.outage(False)


def run(config: TortureConfig, *, log=print) -> Report:
    """One torture run; returns its report (``report.ok`` when every assertion held)."""
    work = config.workdir
    inbox, staging = work / "inbox", work / "staging"
    inbox.mkdir(parents=True, exist_ok=True)
    report = Report(config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()})
    plans = make_plan(config.items, config.duration, config.seed, bursts=config.bursts, burst_share=config.burst_share)
    keys = [p.key for p in plans]
    platforms = [PLATFORMS[name](name, keys) for name in config.platforms]
    for platform in platforms:
        platform.start(work)
    env: dict[str, str] = {}
    for platform in platforms:
        env.update(platform.env)
    daemon_table = {"settle_seconds": config.settle_seconds, "rescan_seconds": 20.0, "max_image_pixels": 10_000_000,
                    "log_level": "INFO"}
    config_path = write_config(work, {p.name: p.table(config.workers) for p in platforms}, daemon=daemon_table)
    oracle = Oracle(inbox, 10_000_000)
    producers = Producers(inbox, staging, plans, oracle, threads=config.producer_threads, settle=config.settle_seconds)
    daemon = DaemonProcess(config_path, env=env)
    chaos = Chaos(daemon, platforms, config)
    t0 = time.monotonic()
    try:
        daemon.start()
        wait_for(lambda: "watching" in daemon.logs(), timeout=30, message="daemon start")
        for platform in platforms:
            if platform.faults is not None:
                platform.faults.retry_after = 1
                platform.faults.slow_seconds = 0.8  # longer than settle_seconds: newer versions wait
                platform.faults.set_rate(config.fault_rate, FAULT_KINDS)
        log(f"torture: {config.items} items, {len(platforms)} platforms, {config.duration:.0f}s of writes and faults")
        started = time.monotonic()
        chaos.start(started)
        producers.run(started)
        report.timings["writes_done_s"] = round(time.monotonic() - started, 1)
        chaos.thread.join()
        for platform in platforms:
            if platform.faults is not None:
                platform.faults.set_rate(0.0)
                platform.faults.outage(False)
        faults_off = time.monotonic()
        report.timings["faults_stopped_s"] = round(faults_off - started, 1)
        log(f"torture: writes and faults done after {faults_off - started:.0f}s; waiting for convergence")
        final = oracle.final()

        def status() -> dict:
            result = run_cli("status", "--json", "--all", "--config", str(config_path), env=env, timeout=120)
            return json.loads(result.stdout)

        def converged() -> bool:
            return not journal_violations(status()) and not any(remote_violations(p, final) for p in platforms)

        try:
            wait_for(converged, timeout=config.converge_timeout, interval=1.0, message="convergence")
        except AssertionError as exc:
            report.violations.append(f"not converged: {exc}")
        report.timings["converged_after_faults_s"] = round(time.monotonic() - faults_off, 1)
        code = daemon.stop(timeout=60)
        if code != 0:
            report.violations.append(f"syncd run exited with {code} on SIGTERM")
        report.timings["total_s"] = round(time.monotonic() - t0, 1)
        _check(report, platforms, oracle, status(), producers, daemon, chaos)
    finally:
        if daemon.running:
            daemon.proc.kill()
        for platform in platforms:
            platform.stop()
    return report


def _check(report: Report, platforms: list[Platform], oracle: Oracle, status: dict, producers: Producers,
           daemon: DaemonProcess, chaos: Chaos) -> None:
    final = oracle.final()
    violations = list(producers.errors)
    counts: dict = {"items": len(final), "versions_made": sum(len(s) for s in oracle.states.values()),
                    "producer_ops": dict(sorted(producers.counts.items())), "chaos": chaos.done, "platforms": {}}
    for platform in platforms:
        violations += remote_violations(platform, final)
        history, checked = history_violations(platform, oracle.states)
        violations += history
        entry = write_counts(platform)
        if platform.faults is not None:
            injected: dict[str, int] = {}
            for kind, _, _ in platform.faults.injected:
                injected[kind] = injected.get(kind, 0) + 1
            entry["faults_injected"] = dict(sorted(injected.items()))
            entry["requests"] = len(platform.emulator.requests)
        counts["platforms"][platform.name] = entry
    violations += journal_violations(status)
    logs = daemon.logs()
    if "Traceback" in logs:
        violations.append("a Traceback in the daemon's log: " + logs[logs.index("Traceback"):][:600])
    counts["daemon_starts"] = daemon.starts
    report.counts = counts
    report.violations += violations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.torture", description=__doc__.split("\n\n")[0])
    defaults = TortureConfig(workdir=Path("."))
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds of writes and faults")
    parser.add_argument("--kills", type=int, default=defaults.kills, help="SIGKILLs of the daemon")
    parser.add_argument("--outages", type=int, default=defaults.outages, help="network outages")
    parser.add_argument("--outage-seconds", type=float, default=defaults.outage_seconds)
    parser.add_argument("--fault-rate", type=float, default=defaults.fault_rate)
    parser.add_argument("--workers", type=int, default=defaults.workers, help="concurrent deliveries per target")
    parser.add_argument("--bursts", type=int, default=defaults.bursts, help="bursts of items written at once")
    parser.add_argument("--burst-share", type=float, default=defaults.burst_share, help="share of the items in bursts")
    parser.add_argument("--platforms", default=",".join(defaults.platforms))
    parser.add_argument("--converge-timeout", type=float, default=defaults.converge_timeout)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="write the report as JSON to this file")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="syncd-torture-"))
    config = TortureConfig(workdir=workdir, items=args.items, duration=args.duration, kills=args.kills,
                           outages=args.outages, outage_seconds=args.outage_seconds, fault_rate=args.fault_rate,
                           workers=args.workers, bursts=args.bursts, burst_share=args.burst_share,
                           platforms=tuple(args.platforms.split(",")),
                           converge_timeout=args.converge_timeout, seed=args.seed)
    report = run(config)
    text = json.dumps(asdict(report), indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(f"torture: {'PASSED' if report.ok else 'FAILED'} ({len(report.violations)} violations); files in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
