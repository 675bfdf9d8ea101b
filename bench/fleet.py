"""Benchmark: a fleet of syncd processes sharing one platform's rate limit.

    .venv/bin/python -m bench.fleet                                  # 30 devices x 50 frames
    .venv/bin/python -m bench.fleet --devices 3 --items 5 --max-wait 120   # a quick look

Each device is its own ``syncd once --max-wait`` process with its own folder, journal and
``key_prefix`` (``dev00``, ``dev01``, ...), all started together against ONE emulator (its
own process) and one dataset / project, as a fleet of edge boards feeding one account. The
emulator serves ``--rate-limit`` requests/s across all of them (429 + ``Retry-After: 1``
beyond), injects a fault (``--fault-kinds``: 500, 502, 503, reset, lost reply) on
``--fault-rate`` of the requests it serves, and (Nucleus) keeps async jobs ``Running``
``--job-seconds``. syncd runs with its shipped ``[daemon]`` defaults (retry after 2 s,
doubling up to 600 s, with jitter).

Reported: deliveries/s over the fleet's wall time (first start to last exit), requests
served per second over the emulator's window (first to last request) and as a share of the
limit (and over the stretch in which every device had work: from the first request to the
first device's exit, as the fleet's start-up runs 30 processes on this machine's cores and
its end is the last devices alone), refused requests against served ones, the requests per
route, whether every device delivered everything
(its exit code, its own count, and the items the dataset holds under its prefix), the
slowest device's wall time against the median device's, and the requests served and
refused per 10 s since the fleet started (the emulator's counts, read once a second).

Goals (issue 9): everything delivered, served >= 80 % of the limit, refusals <= 0.5x served,
slowest device <= 2x the median.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import BENCH_ROOT, PYTHON, Report, base_jpeg, env_with_repo, median, sidecar_metadata, unique_jpeg
from bench.configs import API_KEY_ENV, write_platform_config
from bench.emulator_server import EmulatorServer

SUMMARY = re.compile(r"^(\d+) delivered \(\d+ in this run\), (\d+) failed, (\d+) skipped;", re.M)  # once: last line


@dataclass
class Device:
    name: str
    folder: Path
    config: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    code: int | None = None
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    held: int = 0  # items the platform holds under this device's prefix

    @property
    def wall(self) -> float:
        return self.ended - self.started


def write_frames(root: Path, devices: int, items: int, size: tuple[int, int]) -> list[Path]:
    """``items`` frames with sidecars per device folder, unique bytes across the whole fleet
    (Edge Impulse refuses duplicates); reused when a marker says the set is the same."""
    folders = [root / f"dev{n:02d}" for n in range(devices)]
    marker = root.parent / f".{root.name}.fleet-set"
    spec = f"{devices}x{items} {size[0]}x{size[1]}"
    if marker.exists() and marker.read_text() == spec:
        return folders
    if root.exists():
        shutil.rmtree(root)
    base = base_jpeg(*size)
    for n, folder in enumerate(folders):
        (folder / "cam0").mkdir(parents=True)
        for i in range(items):
            index = n * items + i
            stem = folder / "cam0" / f"frame_{i:05d}"
            stem.with_suffix(".jpg").write_bytes(unique_jpeg(base, index))
            stem.with_suffix(".json").write_text(json.dumps({"metadata": sidecar_metadata(index)}))
    marker.write_text(spec)
    return folders


def remote_prefix(platform: str, device: str) -> str:
    """How a key under ``device``'s prefix starts on the platform (Edge Impulse names join
    the key's parts with ``__``)."""
    return device + ("/" if platform == "nucleus" else "__")


def per_interval(timeline: list[tuple[float, int, int]], step: float) -> list[tuple[float, float]]:
    """Requests served and refused per second in each ``step`` seconds, from cumulative
    counts sampled about once a second."""
    series: list[tuple[float, float]] = []
    if not timeline:
        return series
    edge, last = step, (0.0, 0, 0)
    for sample in timeline:
        if sample[0] >= edge:
            span = sample[0] - last[0]
            series.append((round((sample[1] - last[1]) / span, 1), round((sample[2] - last[2]) / span, 1)))
            last, edge = sample, edge + step
    return series


def served_while_all_busy(timeline: list[tuple[float, int, int]], first_done: float) -> float | None:
    """Requests served per second from the fleet's first served request (the last sample
    before it) to the first device's exit: the stretch in which every device had work. None
    when the samples do not span it."""
    before = [sample for sample in timeline if sample[1] == 0]
    upto = [sample for sample in timeline if sample[0] <= first_done]
    if not before or not upto or upto[-1][0] <= before[-1][0]:
        return None
    return (upto[-1][1] - before[-1][1]) / (upto[-1][0] - before[-1][0])


def run(args: argparse.Namespace) -> Report:
    workdir = BENCH_ROOT / "fleet"
    size = tuple(int(v) for v in args.size.split("x"))
    folders = write_frames(workdir / "frames", args.devices, args.items, size)  # type: ignore[arg-type]
    time.sleep(2.5)  # older than settle_seconds: the frames count as complete at once
    knobs = {"rate_limit": args.rate_limit, "fault_rate": args.fault_rate, "fault_kinds": args.fault_kinds,
             "seed": args.seed}
    if args.platform == "nucleus":
        knobs["job_seconds"] = args.job_seconds
    with EmulatorServer(args.platform, **knobs) as emulator:
        creds = emulator.call("new")
        runs = workdir / "runs"
        if runs.exists():
            shutil.rmtree(runs)
        devices = [Device(f.name, f, write_platform_config(runs / f.name, args.platform, creds, f, workers=args.workers,
                                                           key_prefix=f.name)) for f in folders]
        env = env_with_repo({API_KEY_ENV[args.platform]: creds["api_key"]})
        emulator.call("mark")
        fleet_start = time.perf_counter()
        for device in devices:
            log = open(device.config.parent / "once.log", "w")
            device.started = time.perf_counter()
            device.proc = subprocess.Popen(
                [PYTHON, "-m", "syncd", "once", "--config", str(device.config), "--max-wait", str(args.max_wait)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=device.config.parent)
            log.close()
        deadline = time.perf_counter() + args.max_wait + 180
        waiting = list(devices)
        timeline: list[tuple[float, int, int]] = []  # (s since start, served, refused) once a second
        while waiting:
            elapsed = time.perf_counter() - fleet_start
            if not timeline or elapsed - timeline[-1][0] >= 1.0:
                counts = emulator.call("stats")
                timeline.append((elapsed, counts["served"], counts["refused"]))
            for device in list(waiting):
                code = device.proc.poll()
                if code is None and time.perf_counter() > deadline:
                    device.proc.kill()  # only our own children, by pid
                    code = device.proc.wait()
                if code is not None:
                    device.ended, device.code = time.perf_counter(), code
                    waiting.remove(device)
            time.sleep(0.05)
        fleet_wall = time.perf_counter() - fleet_start
        window = emulator.call("window")
        kinds = request_kinds(emulator.call("spans")["spans"])
        stats = emulator.call("stats")
        keys = emulator.call("keys", creds=creds)["keys"]

    for device in devices:
        output = (device.config.parent / "once.log").read_text(errors="replace")
        match = SUMMARY.search(output)
        if match:
            device.delivered, device.failed, device.pending = (int(g) for g in match.groups())
        prefix = remote_prefix(args.platform, device.name)
        device.held = sum(1 for key in keys if key.startswith(prefix))

    expected = args.devices * args.items
    delivered = sum(d.delivered for d in devices)
    complete = [d for d in devices if d.code == 0 and d.delivered == args.items and d.held == args.items]
    walls = [d.wall for d in devices]
    span = (window["end"] - window["start"]) if window["start"] is not None else float("nan")
    served, refused = stats["served"], stats["refused"]
    served_rate = served / span if span else float("nan")
    slowest, typical = max(walls), median(walls)
    everything = len(complete) == len(devices) and len(keys) == expected

    report = Report(args.name, ["figure", "value", "goal"])
    report.add("devices finished with everything delivered", f"{len(complete)} of {len(devices)}", "all")
    report.add("items the platform holds", f"{len(keys)} of {expected}", "all")
    report.add("deliveries/s (fleet wall time)", delivered / fleet_wall, "")
    report.add("fleet wall time, s", fleet_wall, "")
    report.add("requests served/s (emulator window)", served_rate, "")
    report.add("served, share of the limit", served_rate / args.rate_limit if args.rate_limit else "", ">= 0.8")
    first_done = min(d.ended for d in devices) - fleet_start
    busy = served_while_all_busy(timeline, first_done)
    report.add(f"served share while every device had work (first request to {first_done:.0f} s)",
               busy / args.rate_limit if busy is not None and args.rate_limit else "", "")
    report.add("requests served", served, "")
    report.add("requests refused (429)", refused, "")
    report.add("refused / served", refused / served if served else float("nan"), "<= 0.5")
    report.add("requests served per delivery", served / delivered if delivered else float("nan"), "")
    stopped = sum(1 for d in devices if d.code != 0)
    report.add("slowest device / median device (wall)", slowest / typical if not stopped else
               f"{slowest / typical:.2f} ({stopped} devices stopped unfinished: walls capped by --max-wait)", "<= 2")
    report.add("device wall s: fastest, median, slowest", f"{min(walls):.1f}, {typical:.1f}, {slowest:.1f}", "")
    report.facts.update(
        platform=args.platform, devices=args.devices, items_per_device=args.items, rate_limit=args.rate_limit,
        fault_rate=args.fault_rate, fault_kinds=args.fault_kinds, job_seconds=args.job_seconds,
        max_wait=args.max_wait, workers=args.workers, frame_size=args.size, everything_delivered=everything,
        delivered=delivered, fleet_wall=fleet_wall, window=span, requests=window["requests"], served=served,
        refused=refused,
        faults=stats["faults"], devices_detail=[
            {"device": d.name, "exit": d.code, "wall": round(d.wall, 2), "delivered": d.delivered,
             "failed": d.failed, "not_delivered": d.pending, "held": d.held} for d in devices])
    report.facts["requests_by_kind"] = kinds
    report.notes.append("requests by kind (served and refused): "
                        + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    first = next((t for t, served, _ in timeline if served), None)
    report.facts["first_request_served_by_s"] = first
    report.facts["first_device_done_s"] = first_done
    series = per_interval(timeline, 10.0)
    report.facts["served_refused_per_10s"] = series
    report.notes.append("served/s (refused/s) per 10 s since the fleet started: "
                        + ", ".join(f"{a:.0f} ({b:.0f})" for a, b in series))
    report.notes.append(
        f"{args.devices} syncd processes x {args.items} frames ({args.size} JPEG + sidecar), {args.platform} emulator: "
        f"{args.rate_limit} req/s, {args.fault_rate:.0%} faults ({args.fault_kinds})"
        + (f", jobs Running {args.job_seconds:g} s" if args.platform == "nucleus" else "")
        + f"; syncd once --max-wait {args.max_wait:g}, workers {args.workers}; faults injected: {stats['faults']}")
    report.finish()
    return report


def request_kinds(spans: list) -> dict[str, int]:
    """Requests per route, ids replaced by ``*`` (``GET job/*``, ``GET dataset/*/refloc/*``),
    most frequent first."""
    counts: dict[str, int] = {}
    for _, _, request in spans:
        method, _, path = request.partition(" ")
        parts = [part for part in path.split("/") if part and part not in ("v1", "nucleus", "api")]
        shape = "/".join("*" if any(c.isdigit() for c in part) or "%" in part else part for part in parts)
        kind = f"{method} {shape}"
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--devices", type=int, default=30)
    parse.add_argument("--items", type=int, default=50, help="frames per device")
    parse.add_argument("--platform", choices=("nucleus", "edgeimpulse"), default="nucleus")
    parse.add_argument("--rate-limit", type=int, default=40, help="requests/s the platform serves, whole fleet")
    parse.add_argument("--fault-rate", type=float, default=0.1, help="fraction of served requests given a fault")
    parse.add_argument("--fault-kinds", default="500,502,503,reset,lost_reply")
    parse.add_argument("--job-seconds", type=float, default=1.0, help="Nucleus: seconds a job stays Running")
    parse.add_argument("--max-wait", type=float, default=300.0, help="syncd once --max-wait of each device")
    parse.add_argument("--workers", type=int, default=4, help="workers of each device's target (4: the default)")
    parse.add_argument("--size", default="320x240", help="frame size, WxH")
    parse.add_argument("--seed", type=int, default=1234, help="seed of the emulator's fault injection")
    parse.add_argument("--name", default="fleet", help="name of the saved report (bench/out/NAME.json)")
    return parse


def main(argv: list[str] | None = None) -> Report:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
