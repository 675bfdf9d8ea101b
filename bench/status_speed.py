"""Benchmark: ``syncd status`` on a journal tracking 100,000 items.

    .venv/bin/python -m bench.status_speed                  # 100,000 items, 7 rounds
    .venv/bin/python -m bench.status_speed --items 20000

The journal tracks ``--items`` items of the shared tree (bench.common.shared_tree) with a
realistic spread: 2 % pending, 0.5 % failed (each with its reason), 0.2 % in flight, the
rest delivered. Measured, median of ``--rounds``:

- the ``syncd status`` command (and ``status --json``), a fresh process each time, against
  the same command on an empty journal (baseline: interpreter start, imports, config);
- ``status.collect()`` in process, against the floor any status pays: one
  ``SELECT state, count(*) FROM deliveries GROUP BY state``.

Goal: the command answers in well under a second on 100,000 items.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BENCH_ROOT, JournalMix, Report, env_with_repo, fill_journal, median, shared_tree
from bench.configs import write_local_config

MIX = JournalMix(pending=0.02, failed=0.005, in_flight=0.002)


def command_seconds(config: Path, *extra: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "syncd", "status", "--config", str(config), *extra],
                            capture_output=True, text=True, env=env_with_repo(), cwd=config.parent, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-2000:]
    return elapsed


def collect_seconds(config: Path) -> tuple[float, dict]:
    from syncd import status
    from syncd.config import load_config

    loaded = load_config(config)
    start = time.perf_counter()
    data = status.collect(loaded)
    return time.perf_counter() - start, data


def floor_seconds(db: Path) -> float:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        start = time.perf_counter()
        conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        return time.perf_counter() - start
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    workdir = BENCH_ROOT / "status"
    tree, _files = shared_tree(args.items)
    config = write_local_config(workdir, tree)
    items = fill_journal(config, mix=MIX)
    empty_dir = workdir / "empty"
    (empty_dir / "inbox").mkdir(parents=True, exist_ok=True)
    empty_config = write_local_config(empty_dir, empty_dir / "inbox")
    fill_journal(empty_config)  # creates the (empty) journal
    db = workdir / "state" / "syncd.db"

    _, data = collect_seconds(config)  # warm the page cache
    target = data["folders"][0]["targets"][0]
    print(f"{items} items: {target['delivered']} delivered, {target['pending']} pending, {target['failed']} failed")
    assert target["delivered"] + target["pending"] + target["failed"] == items

    rows: dict[str, list[float]] = {k: [] for k in ("cmd", "cmd_empty", "json", "json_empty", "collect", "floor")}
    for _ in range(args.rounds):
        rows["cmd"].append(command_seconds(config))
        rows["cmd_empty"].append(command_seconds(empty_config))
        rows["json"].append(command_seconds(config, "--json"))
        rows["json_empty"].append(command_seconds(empty_config, "--json"))
        rows["collect"].append(collect_seconds(config)[0])
        rows["floor"].append(floor_seconds(db))
    m = {k: median(v) for k, v in rows.items()}

    report = Report("status_speed", ["", f"{items} items (s)", "baseline (s)", "ratio", "added by the items (s)"])
    report.add("`syncd status` (process)", m["cmd"], m["cmd_empty"], m["cmd"] / m["cmd_empty"],
               m["cmd"] - m["cmd_empty"])
    report.add("`syncd status --json` (process)", m["json"], m["json_empty"], m["json"] / m["json_empty"],
               m["json"] - m["json_empty"])
    report.add("`status.collect()` vs one GROUP BY", m["collect"], m["floor"], m["collect"] / m["floor"], "")
    report.facts.update(items=items, rounds=args.rounds, samples=rows, medians=m, goal_seconds=1.0)
    report.notes.append(f"baseline of the commands: the same command on an empty journal; goal: under 1 s on "
                        f"{items} items -> {'met' if m['cmd'] < 1.0 and m['json'] < 1.0 else 'MISSED'}")
    report.finish()
    return report


if __name__ == "__main__":
    main()
