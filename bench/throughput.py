"""Benchmark: images per second delivered to the Nucleus and Edge Impulse emulators.

    .venv/bin/python -m bench.throughput                       # 600 frames, 3 rounds, both platforms
    .venv/bin/python -m bench.throughput --items 300 --rounds 1 --platforms edgeimpulse

The data: ``--items`` unique camera frames (640x480 JPEG, ~40 KB) in 4 folders, each with
a sidecar of metadata (4 keys). Three uploaders deliver the same set to a fresh dataset /
project of the same emulator, one after the other, ``--rounds`` times (interleaved, so
machine noise hits all three alike):

- **syncd**: ``syncd once`` on the folder (scan, settle, read and verify each item, one
  request per item through the platform adapter, journal every step), ``workers`` =
  ``--workers``;
- **hand loop**: a minimal hand-written ``requests`` loop at the same concurrency
  (``--workers`` threads, one Session each) making the same requests per item as syncd's
  adapter: Nucleus append (``async=1``), job status, job errors; Edge Impulse one ingestion
  POST. It reads each image and sidecar and sends them; nothing else;
- **SDK**: the official SDK's own upload with its defaults — scale-nucleus 0.22.3
  ``dataset.append(items, update=True)`` of local ``DatasetItem``s (batches of 10 files per
  request, 10 in flight; it runs in ``.venv-sdk-nucleus``), edgeimpulse 1.0.20
  ``data.upload_samples`` (one file per request, its thread pool: min(32, CPUs + 4)).

The emulator runs in its own process (bench.emulator_server) and times each run from
the first request it receives to the end of the last one; images/s = items / that window.
It counts what the dataset holds afterwards (must be every item). Nucleus jobs complete as
soon as they are created, the fastest a server can be: what is measured is the uploaders.
Process wall times (start to exit, imports included) are recorded too.

Goals: syncd at least 0.9x the hand loop and faster than the SDK.
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
        endpoint, dataset = creds["endpoint"], creds["dataset_id"]
        with open(path, "rb") as handle:
            data = handle.read()
        name = key + ".jpg"
        items = json.dumps([{"metadata": metadata, "reference_id": key, "image_url": name, "update": True}])
        reply = session.post(f"{endpoint}/dataset/{dataset}/append", params={"async": "1"}, timeout=120,
                             files=[("items", (None, items, "application/json")),
                                    ("image", (quote(name, safe=""), data, "image/jpeg"))])
        reply.raise_for_status()
        job = reply.json()["job_id"]
        while True:
            status = session.get(f"{endpoint}/job/{job}", timeout=120).json()["status"]
            if status not in ("Queued", "Running"):
                break
            time.sleep(0.2)
        failures = session.get(f"{endpoint}/job/{job}/errors", timeout=120).json()
        if status != "Completed" or failures:
            errors.append(f"{key}: {status} {failures}")

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
    """The official SDK's own upload, with its defaults. ``nosleep``: scale-nucleus without
    the 5 s sleep its job wait makes after every status poll (even of a finished job)."""
    items = _items(listing)
    if platform == "nucleus":
        import nucleus.async_job
        from nucleus import DatasetItem, NucleusClient

        if variant == "nosleep":
            nucleus.async_job.JOB_POLLING_INTERVAL = 0

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


def run_contender(kind: str, platform: str, creds: dict, listing, images, workdir, workers: int) -> float:
    """Run one uploader to completion in its own process; returns its wall time (s)."""
    import subprocess

    from bench.common import PYTHON, REPO, env_with_repo

    if kind == "syncd":
        config = syncd_config(platform, creds, images, workdir, workers)
        key_env = {"nucleus": "NUCLEUS_API_KEY", "edgeimpulse": "EI_API_KEY"}[platform]
        command = [PYTHON, "-m", "syncd", "once", "--config", str(config)]
        env = env_with_repo({key_env: creds["api_key"]})
    elif kind == "hand":
        command = [PYTHON, str(REPO / "bench" / "throughput.py"), "--hand", platform, json.dumps(creds), str(listing),
                   str(workers)]
        env = env_with_repo()
    else:
        python = REPO / SDK_NUCLEUS_VENV / "bin" / "python" if platform == "nucleus" else Path(PYTHON)
        if not python.exists():
            raise SystemExit(f"{python} is missing: run tests/install.sh (it makes the SDK venvs)")
        command = [str(python), str(REPO / "bench" / "throughput.py"), "--sdk", platform, json.dumps(creds),
                   str(listing), "nosleep" if kind == "sdk-nosleep" else "shipped"]
        env = env_with_repo()
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir, timeout=900)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{kind} on {platform} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed


def syncd_config(platform: str, creds: dict, images, workdir, workers: int):
    import shutil

    from tests.daemon_harness import write_config

    run_dir = workdir / f"syncd-{platform}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    if platform == "nucleus":
        table = {"platform": "nucleus", "dataset_id": creds["dataset_id"], "base_url": creds["endpoint"],
                 "workers": workers}
    else:
        table = {"platform": "edgeimpulse", "project_id": creds["project_id"], "ingestion_url": creds["url"],
                 "api_url": creds["url"] + "/v1", "category": "training", "label_source": "none", "workers": workers}
    return write_config(run_dir, {platform: table}, folders=[{"path": str(images), "targets": [platform]}],
                        daemon={"state_dir": str(run_dir / "state"), "settle_seconds": 2.0})


def main(argv: list[str] | None = None):
    import argparse

    from bench.common import BENCH_ROOT, ProcessProbe, Report, jpeg_images, median
    from bench.emulator_server import EmulatorServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="syncd workers = hand-loop threads (4: syncd's default)")
    parser.add_argument("--platforms", default="nucleus,edgeimpulse")
    parser.add_argument("--contenders", default="syncd,hand,sdk")
    parser.add_argument("--shipped-sdk-items", type=int, default=100,
                        help="frames for scale-nucleus as shipped (it sleeps 5 s per request of 10)")
    args = parser.parse_args(argv)

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

    report = Report("throughput", ["platform", "uploader", "images/s (median)", "vs hand loop",
                                   "vs hand loop, per round", "vs SDK", "requests/item", "CPU ms/frame: uploader, emulator"])
    for platform in args.platforms.split(","):
        kinds = contenders + (["sdk-nosleep"] if platform == "nucleus" and "sdk" in contenders else [])
        rates = {k: [] for k in kinds}
        walls = {k: [] for k in kinds}
        requests = {k: [] for k in kinds}
        cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
        with EmulatorServer(platform) as emulator:
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
                    wall = run_contender(kind, platform, creds, kind_listing, images, workdir, args.workers)
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
                    print(f"{platform} round {round_no + 1} {kind}: {rate:.0f} images/s ({window['requests']} requests, "
                          f"process {wall:.1f}s, CPU: uploader {client_cpu:.1f}s, emulator {server_cpu:.1f}s)", flush=True)
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
    report.facts.update(items=args.items, rounds=args.rounds, workers=args.workers, mean_image_bytes=size)
    report.notes.append(f"{args.items} frames of {size / 1024:.0f} KB with sidecars; syncd workers = hand-loop "
                        f"threads = {args.workers}; median of {args.rounds} rounds")
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
