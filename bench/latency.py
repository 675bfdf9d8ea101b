"""Benchmark: latency from a file closed to its delivery acknowledged, on the local target.

    .venv/bin/python -m bench.latency                      # 200 items, 5 per second, settle 2 s
    .venv/bin/python -m bench.latency --items 100 --rate 10 --settle 1

A producer writes ``--items`` camera frames (640x480 JPEG, ~40 KB, plain open/write/close
into the folder, like a camera's uploader) at ``--rate`` per second. For each it records
when the file was closed. ``syncd run`` (a real process under a fake systemd, default
configuration but ``settle_seconds``) delivers them to the local target; the latency is the
journal's ``acked_at`` minus the close time. Reported: p50, p99 and max, and the same minus
``settle_seconds`` (the quiet time a file must have before it counts as complete: the
designed part of the latency).

Baseline, fed the same frames at the same moments into its own folder: a minimal
hand-written watcher — a watchdog Observer that, ``settle_seconds`` after the last event
of a file, copies it to a dataset folder (temporary file, fsync, rename) — the least any
settle-then-deliver tool pays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import BENCH_ROOT, Report, SyncdRun, base_jpeg, env_with_repo, percentile, unique_jpeg
from bench.configs import write_local_config


def baseline_watcher(source: str, target: str, settle: float) -> None:
    """The baseline process: print one JSON line ``{"name", "acked_at"}`` per copied file."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    timers: dict[str, threading.Timer] = {}
    lock = threading.Lock()
    out = threading.Lock()

    def deliver(path: str) -> None:
        name = os.path.basename(path)
        temp = os.path.join(target, f".{name}.tmp")
        with open(path, "rb") as src, open(temp, "wb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temp, os.path.join(target, name))
        acked = time.time()
        with out:
            print(json.dumps({"name": name, "acked_at": acked}), flush=True)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.is_directory or event.event_type in ("opened", "closed_no_write", "deleted"):
                return
            path = getattr(event, "dest_path", "") or event.src_path
            with lock:
                if path in timers:
                    timers[path].cancel()
                timers[path] = timer = threading.Timer(settle, deliver, (path,))
                timer.start()

    observer = Observer()
    observer.schedule(Handler(), source, recursive=False)
    observer.start()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.read()
    observer.stop()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rate", type=float, default=5.0, help="frames written per second")
    parser.add_argument("--settle", type=float, default=2.0, help="settle_seconds")
    args = parser.parse_args(argv)

    workdir = BENCH_ROOT / "latency"
    if workdir.exists():
        shutil.rmtree(workdir)
    inbox, base_in, base_out = workdir / "inbox", workdir / "baseline-in", workdir / "baseline-out"
    for directory in (inbox, base_in, base_out):
        directory.mkdir(parents=True)
    config = write_local_config(workdir, inbox, daemon={"settle_seconds": args.settle})
    frame = base_jpeg()

    daemon = SyncdRun(config)
    baseline = subprocess.Popen([sys.executable, "-m", "bench.latency", "--baseline-watcher", str(base_in),
                                 str(base_out), str(args.settle)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env_with_repo())
    closed: dict[str, float] = {}
    base_closed: dict[str, float] = {}
    base_acked: dict[str, float] = {}
    try:
        daemon.wait_ready()
        assert json.loads(baseline.stdout.readline()).get("ready")
        reader = threading.Thread(target=lambda: [base_acked.__setitem__(r["name"], r["acked_at"])
                                                  for r in map(json.loads, baseline.stdout)], daemon=True)
        reader.start()
        print(f"writing {args.items} frames at {args.rate:g}/s (settle_seconds = {args.settle:g})")
        start = time.monotonic()
        for i in range(args.items):
            name = f"frame_{i:05d}.jpg"
            data = unique_jpeg(frame, i)
            # Alternate which side is written first, so neither is always a little later.
            sides = [(inbox, closed), (base_in, base_closed)]
            for directory, stamps in (sides if i % 2 == 0 else sides[::-1]):
                with open(directory / name, "wb") as handle:
                    handle.write(data)
                stamps[name] = time.time()
            time.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
        acked = wait_acked(workdir / "state" / "syncd.db", args.items, timeout=args.settle * 10 + 60)
        deadline = time.monotonic() + 30
        while len(base_acked) < args.items and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        baseline.stdin.close()
        baseline.wait(timeout=30)
        daemon.stop()

    syncd = [acked[Path(name).stem] - at for name, at in closed.items()]
    base = [base_acked[name] - at for name, at in base_closed.items() if name in base_acked]
    assert len(base) == args.items, f"the baseline copied {len(base)} of {args.items} files"
    report = Report("latency", ["", "syncd (s)", "baseline watcher (s)", "ratio", "syncd above settle (s)",
                                "baseline above settle (s)"])
    for label, q in (("p50", 50), ("p99", 99), ("max", 100)):
        s, b = percentile(syncd, q), percentile(base, q)
        report.add(label, s, b, s / b, s - args.settle, b - args.settle)
    report.facts.update(items=args.items, rate=args.rate, settle_seconds=args.settle, syncd=syncd, baseline=base)
    report.notes.append(f"{args.items} frames at {args.rate:g}/s, settle_seconds = {args.settle:g}")
    report.finish()
    return report


def wait_acked(db: Path, count: int, *, timeout: float) -> dict[str, float]:
    """``key -> acked_at`` once the journal holds ``count`` acknowledged deliveries."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT i.key, d.acked_at FROM deliveries d JOIN items i ON i.id=d.item_id "
                                "WHERE d.state='acked'").fetchall()
        finally:
            conn.close()
        if len(rows) >= count:
            return dict(rows)
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(rows)} of {count} deliveries acknowledged")
        time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--baseline-watcher":
        baseline_watcher(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        main()
