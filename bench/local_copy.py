"""Benchmark: ``syncd once`` to the local target against a minimal durable copier.

    .venv/bin/python -m bench.local_copy                  # 2,000 frames, 3 rounds
    .venv/bin/python -m bench.local_copy --items 200 --rounds 1

The data: ``--items`` unique camera frames (640x480 JPEG) in 4 folders, each with a sidecar
of metadata. Two programs copy the same set into a fresh dataset directory, each in its
own process, alternating, ``--rounds`` times:

- **syncd**: ``syncd once`` on the folder with one local target (the shipped ``[daemon]``
  defaults; ``workers`` = ``--workers``): scan, settle, read, hash and validate each item,
  journal every step, write image and record (each fsynced, then renamed);
- **copier**: the least a program doing the same job must do, with ``--workers`` threads:
  walk the folder, read each image and its sidecar, sha256 the image, decode it completely
  at 1/8 scale as validation (pillow ``draft``: libjpeg still entropy-decodes every block),
  write the image and a JSON record (key, hash, size, metadata) each to a temp file, fsync,
  rename. No journal: a crash halfway leaves no trace of what was done.

Measured per process, start to exit (imports included): wall time and CPU time (user +
system, from the kernel's accounting of the child). Both datasets must hold every frame.

Goal (issue 9): syncd <= 1.5x the copier's wall time and <= 1.5x its CPU.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading

IMAGE_SUFFIXES = (".jpg", ".jpeg")


# -- the copier (runs in its own process: stdlib + pillow only) ---------------------------------
def _write_durable(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, rename it into place."""
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def copier(source: str, dest: str, workers: int) -> None:
    """Copy every image of ``source`` (with its sidecar's metadata) into ``dest``, durably."""
    from PIL import Image

    todo = []
    for directory, _, names in os.walk(source):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                todo.append(os.path.join(directory, name))
    todo.sort()
    lock = threading.Lock()
    errors: list[str] = []

    def copy_one(path: str) -> None:
        stem = os.path.splitext(path)[0]
        key = os.path.relpath(stem, source)
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            with open(stem + ".json", "rb") as handle:
                metadata = json.loads(handle.read()).get("metadata", {})
        except FileNotFoundError:
            metadata = {}
        digest = hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
        target = os.path.join(dest, key)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _write_durable(target + os.path.splitext(path)[1], data)
        record = {"key": key, "image_sha256": digest, "width": width, "height": height, "metadata": metadata}
        _write_durable(target + ".json", json.dumps(record, sort_keys=True).encode())

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                path = todo.pop()
            try:
                copy_one(path)
            except Exception as exc:  # a baseline that fails must say so, not hide it
                with lock:
                    errors.append(f"{path}: {exc}")

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} copies failed: {errors[:3]}")


# -- the benchmark ----------------------------------------------------------------------------
def _run(command: list[str], env: dict[str, str], cwd) -> tuple[float, float]:
    """Run ``command`` to completion; its wall time and CPU time (s)."""
    import resource
    import subprocess
    import time

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd, timeout=1800)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _count(dest) -> tuple[int, int]:
    images = records = 0
    for _, _, names in os.walk(dest):
        images += sum(1 for n in names if n.endswith(IMAGE_SUFFIXES))
        records += sum(1 for n in names if n.endswith(".json"))
    return images, records


def _spread(ratios: list[float]) -> str:
    """``median (min-max)`` of per-round ratios."""
    from bench.common import median

    return f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: list[str] | None = None):
    import argparse
    import shutil
    import time

    from bench.common import BENCH_ROOT, PYTHON, REPO, Report, env_with_repo, jpeg_images, median
    from bench.configs import write_local_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="syncd workers = copier threads (4: syncd's default)")
    parser.add_argument("--taskset", type=int, default=None, metavar="CPU", help="run both on this CPU only")
    parser.add_argument("--name", default="local_copy", help="name of the saved report (bench/out/NAME.json)")
    args = parser.parse_args(argv)

    workdir = BENCH_ROOT / "local_copy"
    frames = workdir / "frames"
    pairs = jpeg_images(frames, args.items)
    time.sleep(2.5)  # older than settle_seconds: the frames count as complete at once
    pin = ["taskset", "-c", str(args.taskset)] if args.taskset is not None else []
    env = env_with_repo()
    figures: dict[str, list[tuple[float, float]]] = {"syncd": [], "copier": []}
    for round_no in range(args.rounds):
        order = ["syncd", "copier"] if round_no % 2 == 0 else ["copier", "syncd"]
        for kind in order:
            run_dir = workdir / kind
            if run_dir.exists():
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            if kind == "syncd":
                config = write_local_config(run_dir, frames, workers=args.workers)
                command = [*pin, PYTHON, "-m", "syncd", "once", "--config", str(config)]
            else:
                command = [*pin, PYTHON, str(REPO / "bench" / "local_copy.py"), "--copier", str(frames),
                           str(run_dir / "dataset"), str(args.workers)]
            wall, cpu = _run(command, env, run_dir)
            held = _count(run_dir / "dataset")
            assert held == (len(pairs), len(pairs)), f"{kind} left {held} (images, records) of {len(pairs)}"
            figures[kind].append((wall, cpu))
            print(f"round {round_no + 1} {kind}: wall {wall:.2f}s, CPU {cpu:.2f}s", flush=True)

    report = Report(args.name, ["program", "wall s (median)", "CPU s (median)", "CPU ms/frame",
                                "wall vs copier", "CPU vs copier", "wall vs copier, per round",
                                "CPU vs copier, per round"])
    copier_wall = median([w for w, _ in figures["copier"]])
    copier_cpu = median([c for _, c in figures["copier"]])
    for kind in ("syncd", "copier"):
        wall, cpu = median([w for w, _ in figures[kind]]), median([c for _, c in figures[kind]])
        paired_wall = [a[0] / b[0] for a, b in zip(figures[kind], figures["copier"])]
        paired_cpu = [a[1] / b[1] for a, b in zip(figures[kind], figures["copier"])]
        report.add(kind, wall, cpu, cpu / len(pairs) * 1000, wall / copier_wall, cpu / copier_cpu,
                   "" if kind == "copier" else _spread(paired_wall), "" if kind == "copier" else _spread(paired_cpu))
    report.facts.update(items=len(pairs), rounds=args.rounds, workers=args.workers, taskset=args.taskset,
                        runs={k: [{"wall": w, "cpu": c} for w, c in v] for k, v in figures.items()})
    report.notes.append(f"{len(pairs)} frames 640x480 with sidecars; syncd workers = copier threads = {args.workers}; "
                        f"median of {args.rounds} rounds; goal: syncd <= 1.5x the copier on wall and CPU")
    report.finish()
    return report


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--copier":
        copier(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        main()
