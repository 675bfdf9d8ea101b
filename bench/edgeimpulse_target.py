"""Benchmark: the Edge Impulse target alone (no daemon): CPU per frame and images/s of its
uploads against a hand-written ``requests`` loop and the official SDK's ``upload_samples``.

    .venv/bin/python -m bench.edgeimpulse_target                 # 300 frames, 3 rounds
    .venv/bin/python -m bench.edgeimpulse_target --taskset 0     # this process on CPU 0 only

What the daemon adds (scanning, validating, hashing, the journal) is not here: this isolates
the platform adapter's part of ``bench.throughput``. The frames and their sidecars are
``bench.throughput``'s (640x480 JPEG, 4 metadata keys, one value per frame), read into
memory first; every contender uploads the same bytes to a fresh project of one emulator
that runs in its own process (``bench.emulator_server``), with 4 threads:

- **hand loop**: one ``requests.Session`` per thread, one ingestion POST per frame;
- **SDK**: edgeimpulse 1.0.20 ``data.upload_samples`` (one file per request, its own pool);
- **syncd**: ``EdgeImpulseTarget.deliver`` per frame, 4 threads;
- **syncd batches**: ``deliver_batch`` of 10 frames per call, 4 threads (with per-frame
  metadata nothing can share a request: one request per frame, as above);
- **... same metadata**: syncd again on frames whose sidecars are all the same, so batches
  share requests (ten frames per request).

CPU is this process's CPU time (``time.process_time``) per frame; images/s is frames over
the emulator's request window. With ``--taskset CPU`` this process runs on that CPU only
and the emulator on the others: one core for the client, as on an edge board.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path


def _uploads(pairs, *, same_metadata: bool):
    from syncd.targets.base import Upload

    out = []
    for key, path in pairs:
        data = path.read_bytes()
        metadata = ({"site": "bench"} if same_metadata
                    else json.loads(path.with_suffix(".json").read_text())["metadata"])
        out.append(Upload(key=key, version=hashlib.sha256(data + b"version").hexdigest(), image_name=path.name,
                          image=data, image_sha256=hashlib.sha256(data).hexdigest(), image_format="JPEG",
                          width=640, height=480, metadata=metadata, labels=[], source_path=path))
    return out


def _threads(items, send, setup, workers: int) -> None:
    todo: queue.Queue = queue.Queue()
    for item in items:
        todo.put(item)
    errors: list[BaseException] = []

    def worker():
        context = setup()
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                send(context, item)
            except BaseException as exc:  # noqa: BLE001 - reported after the join
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} uploads failed: {errors[0]!r}")


def hand(creds, uploads, workers):
    import requests

    def send(session, upload):
        headers = {"x-api-key": creds["api_key"], "x-no-label": "1", "x-disallow-duplicates": "1",
                   "x-metadata": json.dumps({k: str(v) for k, v in upload.metadata.items()})}
        reply = session.post(f"{creds['url']}/api/training/files", headers=headers, timeout=120,
                             files=[("data", (upload.key.replace("/", "_") + ".jpg", upload.image, "image/jpeg"))])
        reply.raise_for_status()
        assert reply.json()["files"][0]["success"], reply.text

    _threads(uploads, send, requests.Session, workers)


def sdk(creds, uploads, workers):
    import edgeimpulse
    from edgeimpulse.data import Sample, upload_samples

    edgeimpulse.INGESTION_ENDPOINT = creds["url"]
    samples = [Sample(filename=u.key.replace("/", "_") + ".jpg", data=u.image, category="training",
                      metadata={k: str(v) for k, v in u.metadata.items()}) for u in uploads]
    response = upload_samples(samples, api_key=creds["api_key"])
    if response.fails:
        raise SystemExit(f"{len(response.fails)} uploads failed: {response.fails[0]}")


def _target(creds):
    from syncd.targets.edgeimpulse.target import EdgeImpulseSettings, EdgeImpulseTarget

    settings = EdgeImpulseSettings(project_id=creds["project_id"], ingestion_url=creds["url"],
                                   api_url=creds["url"] + "/v1", category="training", label_source="none")
    return EdgeImpulseTarget("ei", settings, env={"EI_API_KEY": creds["api_key"]})


def syncd_deliver(creds, uploads, workers):
    target = _target(creds)
    _threads(uploads, lambda _, upload: target.deliver(upload), lambda: None, workers)
    target.close()


def syncd_batches(creds, uploads, workers):
    target = _target(creds)

    def send(_, batch):
        for result in target.deliver_batch(batch):
            if isinstance(result, Exception):
                raise result

    batches = [uploads[i:i + target.max_batch] for i in range(0, len(uploads), target.max_batch)]
    _threads(batches, send, lambda: None, workers)
    target.close()


CONTENDERS = {"hand loop": hand, "SDK": sdk, "syncd": syncd_deliver, "syncd batches": syncd_batches}


def main(argv: list[str] | None = None):
    import argparse

    from bench.common import BENCH_ROOT, Report, jpeg_images, median
    from bench.emulator_server import EmulatorServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--taskset", type=int, default=None, metavar="CPU",
                        help="run this process on this CPU only, the emulator on the others")
    parser.add_argument("--name", default="edgeimpulse_target")
    args = parser.parse_args(argv)
    emulator_cpus = None
    if args.taskset is not None:
        emulator_cpus = (set(os.sched_getaffinity(0)) - {args.taskset}) or None
        os.sched_setaffinity(0, {args.taskset})
    pairs = jpeg_images(BENCH_ROOT / "throughput" / "frames", args.items)
    runs = [(name, False) for name in CONTENDERS] + [("syncd", True), ("syncd batches", True)]
    figures: dict[str, list[tuple[float, float, float]]] = {}
    with EmulatorServer("edgeimpulse", cpus=emulator_cpus) as emulator:
        for same in (False, True):
            uploads = _uploads(pairs, same_metadata=same)
            for round_no in range(args.rounds):
                names = [name for name, shared in runs if shared == same]
                for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                    creds = emulator.call("new")
                    emulator.call("mark")
                    cpu = time.process_time()
                    CONTENDERS[name](creds, uploads, args.workers)
                    cpu = time.process_time() - cpu
                    window = emulator.call("window")
                    held = emulator.call("count", creds=creds)["count"]
                    emulator.call("purge")
                    assert held == args.items, f"{name} left {held} of {args.items} samples"
                    label = name + (", same metadata" if same else "")
                    rate = args.items / (window["end"] - window["start"])
                    figures.setdefault(label, []).append((cpu / args.items * 1000, rate,
                                                          window["requests"] / args.items))
                    print(f"round {round_no + 1} {label}: {rate:.0f} images/s, CPU {cpu / args.items * 1000:.2f} "
                          "ms/frame", flush=True)
    report = Report(args.name, ["uploader", "CPU ms/frame (median)", "vs hand loop", "images/s (median)",
                                "vs hand loop", "vs SDK", "requests/frame"])
    med = {k: (median([c for c, _, _ in v]), median([r for _, r, _ in v]), median([q for _, _, q in v]))
           for k, v in figures.items()}
    for label, (cpu, rate, per_frame) in med.items():
        report.add(label, cpu, cpu / med["hand loop"][0], rate, rate / med["hand loop"][1], rate / med["SDK"][1],
                   per_frame)
    report.facts.update(items=args.items, rounds=args.rounds, workers=args.workers, taskset=args.taskset,
                        figures=figures)
    report.notes.append(f"{args.items} frames, {args.workers} threads, median of {args.rounds} rounds"
                        + (f"; this process on CPU {args.taskset}" if args.taskset is not None else ""))
    report.finish()
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
