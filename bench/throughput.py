"""Benchmark: images per second delivered to the Nucleus and Edge Impulse emulators.

    .venv/bin/python -m bench.throughput                       # 600 frames, 3 rounds, both platforms
    .venv/bin/python -m bench.throughput --items 300 --rounds 1 --platforms edgeimpulse
    .venv/bin/python -m bench.throughput --taskset 0           # uploaders pinned to CPU 0 (an edge board)

The data: ``--items`` unique camera frames (640x480 JPEG) in 4 folders, each with a
sidecar of metadata (4 keys). The uploaders deliver the same set to a fresh dataset /
project of the same emulator, one after the other, ``--rounds`` times (interleaved, so
machine noise hits all of them alike):

- **syncd**: ``syncd once`` on the folder (scan, settle, read and verify each item, batched
  and pipelined requests through the platform adapter, journal every step), ``workers`` =
  ``--workers``; **syncd-decode** (opt-in in ``--contenders``) the same with
  ``[daemon] image_check = "decode"``: each frame decoded at 1/8 scale instead of the
  default check of its markers;
- **hand loop**: a minimal hand-written ``requests`` loop at the same concurrency
  (``--workers`` threads, one Session each), one item per request: Nucleus a synchronous
  multipart append (no job), Edge Impulse one ingestion POST. It reads each image and
  sidecar and sends them; nothing else;
- **SDK**: the official SDK's own upload with its defaults — scale-nucleus 0.22.3
  ``dataset.append(items, update=True)`` of local ``DatasetItem``s (batches of 10 files per
  request, 10 in flight, then a wait for each job that sleeps 5 s per poll; it runs in
  ``.venv-sdk-nucleus``, on ``--shipped-sdk-items`` frames), edgeimpulse 1.0.20
  ``data.upload_samples`` (one file per request, its thread pool: min(32, CPUs + 4));
- **sdk-fastpoll** (Nucleus): the same SDK with its job poll sleep set to 0.2 s (the hand
  loop's), all frames: what its batching does without the sleep.

The emulator runs in its own process (bench.emulator_server) and times each run from
the first request it receives to the end of the last one; images/s = items / that window.
It counts what the dataset holds afterwards (must be every item). Nucleus async jobs stay
``Running`` for ``--job-seconds`` (1 s by default, as real jobs take seconds; 0: done at
once). ``--taskset CPU`` runs every uploader under ``taskset -c CPU`` and the emulator on
the other CPUs: one core for the client, as on an edge board. Process wall times and CPU
(uploader, emulator) are recorded too.

Goals (issue 9): Nucleus with 1 s jobs >= 1.0x the hand loop and >= 10x the SDK as shipped;
Edge Impulse >= 1.0x the hand loop and the SDK; CPU per frame <= 1.5x the hand loop's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

SDK_NUCLEUS_VENV = ".venv-sdk-nucleus"


# -- uploaders that run in their own process (stdlib + requests / the SDK only) --------------
def _items(listing: str) -> list[tuple[str, str, dict]]:
    """(key, image path, metadata) from the listing file the benchmark wrote."""
    with open(listing) as handle:
        entries = json.load(handle)
    out = []
    for key, path in entries:
        with open(os.path.splitext(path)[0] + ".json") as sidecar:
            out.append((key, path, json.load(sidecar)["metadata"]))
    return out


def hand_loop(platform: str, creds: dict, listing: str, workers: int) -> None:
    """The minimal hand-written uploader: ``workers`` threads, one requests.Session each."""
    import queue
    from urllib.parse import quote

    import requests

    todo: "queue.Queue[str]" = queue.Queue()
    for entry in json.load(open(listing)):
        todo.put(entry)
    errors: list[str] = []

    def nucleus(session, key, path, metadata):
        """One item per synchronous multipart append (no async job to wait for)."""
        endpoint, dataset = creds["endpoint"], creds["dataset_id"]
        with open(path, "rb") as handle:
            data = handle.read()
        name = key + ".jpg"
        items = json.dumps([{"metadata": metadata, "reference_id": key, "image_url": name, "update": True}])
        reply = session.post(f"{endpoint}/dataset/{dataset}/append", timeout=120,
                             files=[("items", (None, items, "application/json")),
                                    ("image", (quote(name, safe=""), data, "image/jpeg"))])
        reply.raise_for_status()
        counts = reply.json()
        if counts.get("upload_errors") or counts.get("new_items", 0) + counts.get("updated_items", 0) != 1:
            errors.append(f"{key}: {counts}")

    def edgeimpulse(session, key, path, metadata):
        with open(path, "rb") as handle:
            data = handle.read()
        headers = {"x-api-key": creds["api_key"], "x-no-label": "1", "x-disallow-duplicates": "1",
                   "x-metadata": json.dumps({k: str(v) for k, v in metadata.items()})}
        reply = session.post(f"{creds['url']}/api/training/files", headers=headers, timeout=120,
                             files=[("data", (key.replace("/", "_") + ".jpg", data, "image/jpeg"))])
        reply.raise_for_status()
        if not reply.json()["files"][0]["success"]:
            errors.append(f"{key}: {reply.text[:200]}")

    send = nucleus if platform == "nucleus" else edgeimpulse

    def worker():
        with requests.Session() as session:
            if platform == "nucleus":
                session.auth = (creds["api_key"], "")
            while True:
                try:
                    key, path = todo.get_nowait()
                except queue.Empty:
                    return
                with open(os.path.splitext(path)[0] + ".json") as sidecar:
                    metadata = json.load(sidecar)["metadata"]
                send(session, key, path, metadata)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} uploads failed: {errors[:3]}")


def sdk_upload(platform: str, creds: dict, listing: str, variant: str = "shipped") -> None:
    """The official SDK's own upload, with its defaults. ``fastpoll``: scale-nucleus with
    0.2 s instead of the 5 s sleep its job wait makes after every status poll (even of a
    finished job)."""
    items = _items(listing)
    if platform == "nucleus":
        import nucleus.async_job
        from nucleus import DatasetItem, NucleusClient

        if variant == "fastpoll":
            nucleus.async_job.JOB_POLLING_INTERVAL = 0.2

        client = NucleusClient(api_key=creds["api_key"], endpoint=creds["endpoint"])
        dataset = client.get_dataset(creds["dataset_id"])
        job = dataset.append([DatasetItem(image_location=path, reference_id=key, metadata=metadata)
                              for key, path, metadata in items], update=True)
        job.sleep_until_complete(verbose_std_out=False)
        if job.status()["status"] != "Completed" or job.errors():
            raise SystemExit(f"the SDK's job ended {job.status()}")
    else:
        os.environ.update(EI_API_KEY=creds["api_key"], EI_INGESTION_ENDPOINT=creds["url"],
                          EI_API_ENDPOINT=creds["url"] + "/v1")
        from edgeimpulse.data import Sample, upload_samples

        samples = []
        for key, path, metadata in items:
            with open(path, "rb") as handle:
                samples.append(Sample(filename=key.replace("/", "_") + ".jpg", data=handle.read(), category="training",
                                      metadata={k: str(v) for k, v in metadata.items()}))
        response = upload_samples(samples)
        if response.fails:
            raise SystemExit(f"{len(response.fails)} uploads failed: {response.fails[0]}")


# -- the benchmark ---------------------------------------------------------------------------
def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_contender(kind: str, platform: str, creds: dict, listing, images, workdir, workers: int,
                  cpu: int | None = None) -> float:
    """Run one uploader to completion in its own process (under ``taskset -c cpu`` when
    given); returns its wall time (s)."""
    import subprocess

    from bench.common import PYTHON, REPO, env_with_repo

    if kind.startswith("syncd"):
        from bench.configs import API_KEY_ENV

        daemon = {"image_check": "decode"} if kind == "syncd-decode" else {}
        config = syncd_config(platform, creds, images, workdir, workers, daemon)
        command = [PYTHON, "-m", "syncd", "once", "--config", str(config)]
        env = env_with_repo({API_KEY_ENV[platform]: creds["api_key"]})
    elif kind == "hand":
        command = [PYTHON, str(REPO / "bench" / "throughput.py"), "--hand", platform, json.dumps(creds), str(listing),
                   str(workers)]
        env = env_with_repo()
    else:
        python = REPO / SDK_NUCLEUS_VENV / "bin" / "python" if platform == "nucleus" else Path(PYTHON)
        if not python.exists():
            raise SystemExit(f"{python} is missing: run tests/install.sh (it makes the SDK venvs)")
        command = [str(python), str(REPO / "bench" / "throughput.py"), "--sdk", platform, json.dumps(creds),
                   str(listing), "fastpoll" if kind == "sdk-fastpoll" else "shipped"]
        env = env_with_repo()
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir, timeout=900)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{kind} on {platform} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def syncd_config(platform: str, creds: dict, images, workdir, workers: int, daemon: dict | None = None):
    import shutil

    from bench.configs import write_platform_config

    run_dir = workdir / f"syncd-{platform}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return write_platform_config(run_dir, platform, creds, images, workers=workers, daemon=daemon)


def main(argv: list[str] | None = None):
    import argparse

    from bench.common import BENCH_ROOT, ProcessProbe, Report, jpeg_images, median
    from bench.emulator_server import EmulatorServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4,
                        help="syncd workers = hand-loop threads (4: syncd's default; Edge Impulse's is 8)")
    parser.add_argument("--platforms", default="nucleus,edgeimpulse")
    parser.add_argument("--contenders", default="syncd,hand,sdk",
                        help='add "syncd-decode" for syncd with [daemon] image_check = "decode"')
    parser.add_argument("--shipped-sdk-items", type=int, default=100,
                        help="frames for scale-nucleus as shipped (it sleeps 5 s per request of 10)")
    parser.add_argument("--job-seconds", type=float, default=1.0,
                        help="Nucleus: seconds an async job stays Running (1; 0: done at once)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the emulator waits per request")
    parser.add_argument("--taskset", type=int, default=None, metavar="CPU",
                        help="run the uploaders on this CPU only (taskset -c CPU), the emulator on the others")
    parser.add_argument("--name", default="throughput", help="name of the saved report (bench/out/NAME.json)")
    args = parser.parse_args(argv)
    uploader_cpu = args.taskset
    emulator_cpus = (set(os.sched_getaffinity(0)) - {uploader_cpu}) or None if uploader_cpu is not None else None

    workdir = BENCH_ROOT / "throughput"
    workdir.mkdir(parents=True, exist_ok=True)
    images = workdir / "frames"
    pairs = jpeg_images(images, args.items)
    time.sleep(2.5)  # older than settle_seconds: the frames count as complete at once
    listing = workdir / "frames.json"
    listing.write_text(json.dumps([[key, str(path)] for key, path in pairs]))
    short_listing = workdir / "frames-short.json"
    short_listing.write_text(json.dumps([[key, str(path)] for key, path in pairs[:args.shipped_sdk_items]]))
    size = sum(path.stat().st_size for _, path in pairs) / len(pairs)
    contenders = args.contenders.split(",")

    report = Report(args.name, ["platform", "uploader", "images/s (median)", "vs hand loop",
                                "vs hand loop, per round", "vs SDK", "requests/item",
                                "CPU ms/frame: uploader, emulator"])
    for platform in args.platforms.split(","):
        kinds = contenders + (["sdk-fastpoll"] if platform == "nucleus" and "sdk" in contenders else [])
        rates = {k: [] for k in kinds}
        walls = {k: [] for k in kinds}
        requests = {k: [] for k in kinds}
        cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        knobs = {"latency": args.latency or None}
        if platform == "nucleus":
            knobs["job_seconds"] = args.job_seconds
        with EmulatorServer(platform, cpus=emulator_cpus, **knobs) as emulator:
            for round_no in range(args.rounds):
                order = kinds[round_no % len(kinds):] + kinds[:round_no % len(kinds)]
                for kind in order:
                    count, kind_listing = args.items, listing
                    if kind == "sdk" and platform == "nucleus":
                        if round_no > 0:
                            continue  # it sleeps 5 s per 10 items: one short round says it all
                        count, kind_listing = min(args.items, args.shipped_sdk_items), short_listing
                    creds = emulator.call("new")
                    client_cpu_before = _children_cpu()
                    emulator.call("mark")
                    server_cpu = ProcessProbe(emulator.pid).cpu_seconds()
                    wall = run_contender(kind, platform, creds, kind_listing, images, workdir, args.workers,
                                         uploader_cpu)
                    server_cpu = ProcessProbe(emulator.pid).cpu_seconds() - server_cpu
                    window = emulator.call("window")
                    held = emulator.call("count", creds=creds)["count"]
                    emulator.call("purge")
                    assert held == count, f"{kind} left {held} of {count} items on {platform}"
                    rate = count / (window["end"] - window["start"])
                    rates[kind].append(rate)
                    walls[kind].append(wall)
                    requests[kind].append(window["requests"])
                    client_cpu = _children_cpu() - client_cpu_before
                    cpu[kind].append((client_cpu, server_cpu))
                    print(f"{platform} round {round_no + 1} {kind}: {rate:.0f} images/s ({window['requests']} "
                          f"requests, process {wall:.1f}s, CPU: uploader {client_cpu:.1f}s, emulator "
                          f"{server_cpu:.1f}s)", flush=True)
        med = {k: median(v) for k, v in rates.items()}
        for kind in kinds:
            frames = min(args.items, args.shipped_sdk_items) if (kind, platform) == ("sdk", "nucleus") else args.items
            paired = [a / b for a, b in zip(rates[kind], rates.get("hand", []))]  # same round, minutes apart
            used = [(c / frames * 1000, e / frames * 1000) for c, e in cpu[kind]]
            report.add(platform, kind, med[kind],
                       med[kind] / med["hand"] if "hand" in med else "",
                       median(paired) if paired and kind != "hand" else "",
                       med[kind] / med["sdk"] if "sdk" in med else "",
                       median(requests[kind]) / frames,
                       f"{median([u for u, _ in used]):.1f}, {median([e for _, e in used]):.1f}")
        report.facts[platform] = {"rates": rates, "walls": walls, "requests": requests, "cpu_uploader_emulator": cpu}
    report.facts.update(items=args.items, rounds=args.rounds, workers=args.workers, mean_image_bytes=size,
                        job_seconds=args.job_seconds, latency=args.latency, taskset=args.taskset)
    report.notes.append(f"{args.items} frames of {size / 1024:.0f} KB with sidecars; syncd workers = hand-loop "
                        f"threads = {args.workers}; median of {args.rounds} rounds; Nucleus jobs Running "
                        f"{args.job_seconds:g} s" + (f"; uploaders on CPU {args.taskset}" if args.taskset is not None
                                                      else ""))
    report.finish()
    return report


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--hand":
        hand_loop(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "--sdk":
        sdk_upload(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        main()
