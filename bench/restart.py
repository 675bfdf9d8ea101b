"""Benchmark: reconciling 100,000 unchanged tracked items after a restart.

    .venv/bin/python -m bench.restart                     # 100,000 items, 5 rounds
    .venv/bin/python -m bench.restart --items 20000 --rounds 3

The tree: ``--items`` small PNG images in 100 folders, a sidecar for every tenth (110,000
files for 100,000 items). The journal tracks every item as delivered, with the signatures
syncd itself takes (bench.common.fill_journal), so a restart finds nothing to do.

Measured, alternating in one process with a warm page cache, best and median of
``--rounds``:

- *baseline*: a plain recursive ``os.scandir`` + ``DirEntry.stat()`` of every file of the
  tree (the least any reconciliation must do: list every folder, stat every file);
- *syncd*: ``Daemon(config, watch=False).open(now)`` — lock, journal, recovery and the full
  start-up scan that compares every item with the journal — then ``close()``.

The first restart runs on the journal as filled, which has no directory digests yet (a
journal written before migration 3, or directories whose items settled after the last
rescan): every item is compared with its journal row. It stores the digests, so the
following rounds are the steady state of a daemon that has rescanned its tree once.

The benchmark checks that the scan really found every item unchanged (nothing settling, no
item re-observed). Goal: syncd within 1.5x of the baseline.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

from bench.common import BENCH_ROOT, Report, fill_journal, median, shared_tree
from bench.configs import write_local_config


def scandir_walk(root: str) -> int:
    """The baseline: every folder listed, every file stat'ed."""
    files = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat()
                    files += 1
    return files


def reconcile(config_path: Path) -> tuple[int, int]:
    """One restart of the daemon on the tracked tree; returns (items known, items re-observed)."""
    from syncd.config import load_config
    from syncd.daemon import Daemon

    daemon = Daemon(load_config(config_path), watch=False)
    daemon.open(time.time())
    try:
        assert daemon.store is not None
        known = daemon.store.conn.execute("SELECT count(*) FROM items").fetchone()[0]
        return known, len(daemon.settling)
    finally:
        daemon.close(wait_seconds=0)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    workdir = BENCH_ROOT / "restart"
    workdir.mkdir(parents=True, exist_ok=True)
    tree, files = shared_tree(args.items)
    started = time.perf_counter()
    config = write_local_config(workdir, tree)
    items = fill_journal(config)
    print(f"setup: {items} items, {files} files, journal filled in {time.perf_counter() - started:.1f}s")

    scandir_walk(str(tree))  # warm the page cache and the dentry cache for both sides
    first_baseline = min(_timed(scandir_walk, str(tree)) for _ in range(2))
    start = time.perf_counter()
    known, reobserved = reconcile(config)
    first = time.perf_counter() - start
    assert known == items and reobserved == 0, f"the scan re-observed {reobserved} of {known} unchanged items"
    print(f"first restart (no directory digests yet): {first:.3f}s, baseline {first_baseline:.3f}s")
    baseline, syncd = [], []
    for round_no in range(args.rounds):
        gc.collect()
        start = time.perf_counter()
        seen = scandir_walk(str(tree))
        baseline.append(time.perf_counter() - start)
        assert seen == files, (seen, files)
        gc.collect()
        start = time.perf_counter()
        known, reobserved = reconcile(config)
        syncd.append(time.perf_counter() - start)
        assert known == items and reobserved == 0, f"the scan re-observed {reobserved} of {known} unchanged items"
        print(f"round {round_no + 1}: baseline {baseline[-1]:.3f}s, syncd {syncd[-1]:.3f}s")

    report = Report("restart", ["", "baseline: scandir + stat (s)", "syncd: open + reconcile (s)", "ratio"])
    report.add(f"restart, median of {args.rounds}", median(baseline), median(syncd), median(syncd) / median(baseline))
    report.add(f"restart, best of {args.rounds}", min(baseline), min(syncd), min(syncd) / min(baseline))
    report.add("first restart, no directory digests yet", first_baseline, first, first / first_baseline)
    report.facts.update(items=items, files=files, rounds=args.rounds, baseline=baseline, syncd=syncd,
                        first=first, first_baseline=first_baseline,
                        ratio_median=median(syncd) / median(baseline), goal_ratio=1.5,
                        us_per_file={"baseline": median(baseline) / files * 1e6, "syncd": median(syncd) / files * 1e6})
    report.notes.append(f"{items} items ({files} files); goal: syncd within 1.5x of the walk "
                        f"-> {'met' if median(syncd) / median(baseline) <= 1.5 else 'MISSED'}")
    report.finish()
    return report


if __name__ == "__main__":
    main()
