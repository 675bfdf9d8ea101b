"""Shared pieces of the benchmarks (throughput, latency, restart, resources, status_speed).

- ``EmulatorServer`` (bench.emulator_server): a platform emulator in its own process.
- ``jpeg_images``: unique, realistic camera frames (640x480 JPEG) without encoding each one.
- ``tracked_tree`` + ``fill_journal``: a tree of 100,000 items and a journal that tracks
  them exactly as the daemon would have left it (signatures taken with syncd's own code).
- ``ProcessProbe``: CPU seconds and peak RSS of a running process, from /proc.
- ``Report``: prints a markdown table and saves the figures to ``bench/out/<name>.json``.

Run every benchmark from the repository root with the project's interpreter, e.g.
``.venv/bin/python -m bench.restart``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("SYNCD_BENCH_OUT", REPO / "bench" / "out"))  # where reports are saved
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- environment and results ----------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures were measured on (recorded with every result)."""
    load = os.getloadavg()
    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in load], "date": time.strftime("%Y-%m-%d")}


def env_with_repo(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SYNCD_CONFIG", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; values need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    """Rows of one benchmark: printed as a markdown table and saved as JSON."""

    name: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def table(self) -> str:
        def cell(value: Any) -> str:
            if isinstance(value, float):
                return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
            return str(value)

        lines = ["| " + " | ".join(self.headers) + " |", "| " + " | ".join("---" for _ in self.headers) + " |"]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def finish(self) -> None:
        print()
        print(self.table())
        for note in self.notes:
            print(note)
        OUT.mkdir(parents=True, exist_ok=True)
        data = {"name": self.name, "machine": machine(), "command": " ".join([Path(PYTHON).name, *sys.argv]),
                "headers": self.headers, "rows": self.rows, "facts": self.facts, "notes": self.notes}
        (OUT / f"{self.name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"(saved to {OUT / (self.name + '.json')})")


# -- processes ------------------------------------------------------------------------------
class ProcessProbe:
    """CPU time and memory of a running process, read from /proc (Linux)."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the process (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    def rss(self) -> int:
        """Resident set size now, bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int:
        """Peak resident set size so far (VmHWM), bytes."""
        return self._status("VmHWM")


def own_peak_rss() -> int:
    return ProcessProbe(os.getpid()).peak_rss()


WATCHDOG_USEC = "60000000"  # WatchdogSec=60s, as in systemd/syncd.service


class NotifySocket:
    """A datagram socket standing in for systemd's: a thread reads every sd_notify message
    as it arrives (as systemd does; a full socket would block the daemon's notify call)."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="syncd-notify-")) / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages.append(message)
                self._arrived.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._arrived:
            while True:
                for message in self.messages[seen:]:
                    if any(line.startswith(prefix) for line in message.splitlines()):
                        return message
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {prefix} from the daemon within {timeout:.0f}s")
                self._arrived.wait(left)

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


class SyncdRun:
    """``syncd run`` as a child process under a fake systemd."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.config = config
        self.notify = NotifySocket()
        self.log = open(config.parent / "daemon.log", "ab")
        # WATCHDOG_PID stays unset (systemd sets it to the main pid): the daemon pings.
        env = env_with_repo({"NOTIFY_SOCKET": str(self.notify.path), "WATCHDOG_USEC": WATCHDOG_USEC, **(env or {})})
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "--config", str(config)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=config.parent)
        self.probe = ProcessProbe(self.proc.pid)
        self.ready_after = 0.0

    def wait_ready(self, timeout: float = 300) -> float:
        self.notify.wait_for("READY=1", timeout)
        self.ready_after = time.perf_counter() - self.started
        return self.ready_after

    def stop(self) -> None:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.log.close()
        self.notify.close()
        assert code == 0, f"syncd run exited {code}; see {self.config.parent / 'daemon.log'}"


# -- images ---------------------------------------------------------------------------------
def base_jpeg(width: int = 640, height: int = 480, quality: int = 85) -> bytes:
    """A camera-like frame: smooth gradients plus some texture, as a baseline JPEG."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(7)
    texture = rng.integers(0, 24, size=(height, width), dtype=np.int32)
    red = (x * 255 // max(1, width - 1) + texture) % 256
    green = (y * 255 // max(1, height - 1) + texture) % 256
    blue = ((x + y) * 128 // max(1, width + height) + texture) % 256
    pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def unique_jpeg(base: bytes, index: int) -> bytes:
    """``base`` with a JPEG comment segment naming ``index`` right after SOI: a valid JPEG
    that decodes to the same pixels but has its own bytes (platforms refuse duplicates)."""
    comment = f"syncd bench frame {index}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return base[:2] + segment + base[2:]


def jpeg_images(directory: Path, count: int, *, width: int = 640, height: int = 480, sidecars: bool = True,
                dirs: int = 4) -> list[tuple[str, Path]]:
    """Write ``count`` unique JPEG frames (and ``<stem>.json`` sidecars with metadata) into
    ``dirs`` sub-folders of ``directory``; returns ``(item key, image path)`` pairs. Reused
    when a previous run left the same set (a marker file records the parameters)."""
    marker = directory.parent / f".{directory.name}.bench-set"
    spec = f"{count} {width}x{height} sidecars={sidecars} dirs={dirs}"
    items = [(f"cam{i % dirs}/frame_{i:06d}", directory / f"cam{i % dirs}" / f"frame_{i:06d}.jpg")
             for i in range(count)]
    if marker.exists() and marker.read_text() == spec:
        return items
    if directory.exists():
        shutil.rmtree(directory)
    base = base_jpeg(width, height)
    for i, (key, path) in enumerate(items):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(unique_jpeg(base, i))
        if sidecars:
            path.with_suffix(".json").write_text(json.dumps({"metadata": sidecar_metadata(i)}))
    marker.write_text(spec)
    return items


def sidecar_metadata(index: int) -> dict[str, Any]:
    return {"camera": f"cam{index % 4}", "seq": index, "site": "bench", "exposure_ms": 8}


# -- a tracked tree of many items -----------------------------------------------------------
def tiny_png() -> bytes:
    """A small valid PNG (the restart and memory benchmarks never read pixels)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def tracked_tree(root: Path, items: int = 100_000, *, dirs: int = 100, sidecar_every: int = 10) -> int:
    """``items`` images in ``dirs`` folders under ``root`` (a sidecar for every
    ``sidecar_every``-th); reused when a marker says it has that shape. Returns the file count."""
    marker = root.parent / f".{root.name}.bench-tree"
    spec = f"{items} dirs={dirs} sidecar_every={sidecar_every}"
    files = items + (items + sidecar_every - 1) // sidecar_every if sidecar_every else items
    if marker.exists() and marker.read_text() == spec:
        return files
    if root.exists():
        shutil.rmtree(root)
    png = tiny_png()
    per_dir = (items + dirs - 1) // dirs
    for i in range(items):
        directory = root / f"cam{i // per_dir:03d}"
        if i % per_dir == 0:
            directory.mkdir(parents=True, exist_ok=True)
        stem = f"frame_{i:07d}"
        with open(directory / f"{stem}.png", "wb") as handle:
            handle.write(png)
        if sidecar_every and i % sidecar_every == 0:
            with open(directory / f"{stem}.json", "w") as handle:
                handle.write(json.dumps({"metadata": {"seq": i}}))
    marker.write_text(spec)
    return files


BENCH_ROOT = Path(os.environ.get("SYNCD_BENCH_DIR", Path(tempfile.gettempdir()) / "syncd-bench"))


def shared_tree(items: int) -> tuple[Path, int]:
    """The tracked tree of ``items`` items the restart, resources and status benchmarks share
    (made once under $SYNCD_BENCH_DIR, default /tmp/syncd-bench); returns it and its file count."""
    root = BENCH_ROOT / f"tree-{items}"
    started = time.perf_counter()
    files = tracked_tree(root, items)
    if time.perf_counter() - started > 1:
        print(f"wrote the tree of {items} items ({files} files) in {time.perf_counter() - started:.0f}s")
    return root, files


@dataclass
class JournalMix:
    """How the tracked items' deliveries are spread over states (the rest are acked)."""

    pending: float = 0.0
    failed: float = 0.0
    in_flight: float = 0.0


def fill_journal(config_path: Path, *, mix: JournalMix = JournalMix(), now: float | None = None) -> int:
    """Make the configuration's journal track every item of its folders as the daemon would
    after delivering them: one ``ready`` item row per item with its real stat signature
    (taken with syncd's own walk and stat_signature) and one delivery row per target,
    spread over states by ``mix``. Returns the number of items."""
    from syncd.config import load_config
    from syncd.items.content import stat_signature
    from syncd.items.convention import IgnoreRules, walk
    from syncd.journal.store import Store

    now = time.time() if now is None else now
    config = load_config(config_path)
    state_dir = config.daemon.state_dir
    if state_dir.exists():
        shutil.rmtree(state_dir)
    store = Store.open(state_dir)
    total = 0
    try:
        for folder in config.folders:
            rules = IgnoreRules([*config.daemon.ignore, *folder.exclude], folder.include)
            item_rows, delivery_rows = [], []
            for index, files in enumerate(walk(folder.path, rules, folder.key_prefix)):
                sig, quiet = stat_signature(files)
                item_id = total + index + 1
                version = f"{item_id:032x}"
                item_rows.append((item_id, str(folder.path), files.key, str(files.image),
                                  None if files.sidecar is None else str(files.sidecar), sig, version, quiet, now))
                fraction = (index * 0.6180339887) % 1.0  # spread the states evenly over the tree
                for target in folder.targets:
                    receipt = json.dumps({"remote_id": files.key, "extra": {"version": version}})
                    if fraction < mix.failed:
                        row = (item_id, target, version, None, None, version, "failed", 1, 0, None,
                               f"{files.key}: refused by the platform (bench)", None, now, None)
                    elif fraction < mix.failed + mix.pending:
                        row = (item_id, target, version, None, None, None, "pending", 0, 0, None, None,
                               now - 30, now, None)
                    elif fraction < mix.failed + mix.pending + mix.in_flight:
                        row = (item_id, target, version, None, version, None, "in_flight", 1, 0, None, None,
                               now - 5, now, None)
                    else:
                        row = (item_id, target, version, version, None, None, "acked", 0, 0, receipt, None,
                               None, now, now)
                    delivery_rows.append(row)
            store.conn.execute("BEGIN")
            store.conn.executemany(
                "INSERT INTO items (id, folder, key, image, sidecar, stat_sig, version, state, first_seen, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'ready', ?, ?)", item_rows)
            store.conn.executemany(
                "INSERT INTO deliveries (item_id, target, want_version, acked_version, inflight_version, "
                "failed_version, state, attempts, next_attempt_at, receipt, error, pending_since, updated_at, "
                "acked_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", delivery_rows)
            for target in folder.targets:
                store.conn.execute("INSERT OR IGNORE INTO targets (name, last_success) VALUES (?, ?)", (target, now))
            store.conn.execute("COMMIT")
            total += len(item_rows)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return total
