"""Benchmark: memory and idle cost of ``syncd run`` tracking 100,000 items.

    .venv/bin/python -m bench.resources                    # 100,000 items, one idle minute
    .venv/bin/python -m bench.resources --items 20000 --idle 20

The daemon runs as systemd runs it: a real ``syncd run`` process with ``NOTIFY_SOCKET``
(this benchmark listens on it: ``READY=1`` marks the end of start-up, and the ``STATUS=``
line every 5 s is part of the idle cost) and ``WATCHDOG_USEC`` of the shipped unit (60 s).
Its journal tracks every item of the shared tree as delivered (bench.common.fill_journal);
inotify watches the tree's 100 folders.

1. First start on that journal (no directory digests yet: every item is compared with its
   journal row): peak RSS until READY.
2. Restart (the steady state): peak RSS, then CPU over ``--idle`` seconds of watching.

Baselines, measured in the same minute: the same daemon configuration on an empty folder
(what the 100,000 items add), and a bare watchdog Observer watching the same tree (the
floor of any inotify watcher in Python). The periodic full rescan (every ``rescan_seconds``,
300 s by default) does not fall in one idle minute, so its CPU is measured separately in
process and shown spread over ``rescan_seconds``.

Goals: peak RSS under 80 MB; under 0.5 % of one CPU while idle.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BENCH_ROOT, ProcessProbe, Report, env_with_repo, fill_journal, shared_tree
from bench.common import SyncdRun as Daemon
from bench.configs import write_local_config

MB = 1024 * 1024


def bare_watcher(root: str) -> None:
    """The CPU baseline: a watchdog Observer on the tree, doing nothing with events."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    observer = Observer()
    observer.schedule(FileSystemEventHandler(), root, recursive=True)
    observer.start()
    print("watching", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    observer.stop()
    observer.join()


def rescan_cpu(config: Path) -> float:
    """CPU seconds of one full rescan of the tracked tree (in this process, steady state)."""
    from syncd.config import load_config
    from syncd.daemon import Daemon as Coordinator

    daemon = Coordinator(load_config(config), watch=False)
    daemon.open(time.time())
    try:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            daemon.scan(time.time())
            best = min(best, time.process_time() - start)
        assert not daemon.settling
        return best
    finally:
        daemon.close(wait_seconds=0)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle watching measured")
    args = parser.parse_args(argv)

    tree, files = shared_tree(args.items)
    workdir = BENCH_ROOT / "resources"
    config = write_local_config(workdir, tree, daemon={"log_level": "INFO"})
    items = fill_journal(config)
    empty_dir = workdir / "empty"
    (empty_dir / "inbox").mkdir(parents=True, exist_ok=True)
    empty_config = write_local_config(empty_dir, empty_dir / "inbox", daemon={"log_level": "INFO"})
    fill_journal(empty_config)
    print(f"tracking {items} items ({files} files)")

    first = Daemon(config)
    first_ready = first.wait_ready()
    first_peak = first.probe.peak_rss()
    first.stop()
    print(f"first start: READY after {first_ready:.1f}s, peak RSS {first_peak / MB:.1f} MB")

    daemon, empty = Daemon(config), Daemon(empty_config)
    watcher = subprocess.Popen([sys.executable, "-m", "bench.resources", "--bare-watcher", str(tree)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_with_repo())
    try:
        ready = daemon.wait_ready()
        empty.wait_ready()
        assert watcher.stdout.readline().strip() == "watching"
        time.sleep(2)  # let start-up work (target checks, first STATUS) finish
        probes = {"syncd": daemon.probe, "empty": empty.probe, "watcher": ProcessProbe(watcher.pid)}
        before = {name: probe.cpu_seconds() for name, probe in probes.items()}
        started = time.perf_counter()
        time.sleep(args.idle)
        elapsed = time.perf_counter() - started
        cpu = {name: (probe.cpu_seconds() - before[name]) / elapsed * 100 for name, probe in probes.items()}
        peak = {name: probes[name].peak_rss() for name in ("syncd", "empty")}
        rss = {name: probe.rss() for name, probe in probes.items()}
        watcher_peak = probes["watcher"].peak_rss()
        statuses = [m for m in daemon.notify.messages if m.startswith("STATUS=")]
        pings = [m for m in daemon.notify.messages if m.startswith("WATCHDOG=1")]
    finally:
        watcher.stdin.close()
        watcher.wait(timeout=30)
        daemon.stop()
        empty.stop()
    print(f"restart: READY after {ready:.1f}s; {len(statuses)} STATUS lines and {len(pings)} watchdog pings while idle")

    rescan = rescan_cpu(config)
    rescan_seconds = 300.0
    report = Report("resources", ["", f"syncd, {items} items", "syncd, empty folder", "bare watchdog Observer",
                                  "goal"])
    report.add("peak RSS, first start (MB)", first_peak / MB, "", "", "< 80")
    report.add("peak RSS, restart + idle (MB)", peak["syncd"] / MB, peak["empty"] / MB, watcher_peak / MB, "< 80")
    report.add("RSS while idle (MB)", rss["syncd"] / MB, rss["empty"] / MB, rss["watcher"] / MB, "")
    report.add(f"CPU while idle, {elapsed:.0f} s (% of one core)", cpu["syncd"], cpu["empty"], cpu["watcher"], "< 0.5")
    report.add(f"full rescan every {rescan_seconds:.0f} s, spread (% of one core)", rescan / rescan_seconds * 100,
               "", "", "")
    report.facts.update(items=items, files=files, idle_seconds=elapsed, first_ready_s=first_ready, ready_s=ready,
                        rescan_cpu_s=rescan, cpu_percent=cpu, peak_rss=peak, rss=rss, first_peak_rss=first_peak,
                        status_lines=len(statuses), watchdog_pings=len(pings))
    worst_peak = max(first_peak, peak["syncd"]) / MB
    report.notes.append(f"goals: peak RSS {worst_peak:.1f} MB < 80 -> {'met' if worst_peak < 80 else 'MISSED'}; "
                        f"idle CPU {cpu['syncd']:.2f} % < 0.5 -> {'met' if cpu['syncd'] < 0.5 else 'MISSED'}")
    report.finish()
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-watcher":
        bare_watcher(sys.argv[2])
    else:
        main()
