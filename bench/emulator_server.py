"""A platform emulator in its own process, with the costs of the real service.

    .venv/bin/python -m bench.emulator_server nucleus --job-seconds 1 --rate-limit 40 \\
        --fault-rate 0.1 --latency 0.02

The code under test never shares a GIL with the server. ``EmulatorServer`` starts this
module and drives it over a line protocol on stdin/stdout (one JSON object per line each
way; the first line out is ``{"url": ...}``). The server reports the *window* of a run:
from the first request it received to the end of the last (its own monotonic clock).

Knobs (tests/emulators/knobs.py; all off by default):

- ``--job-seconds S`` (Nucleus): an async job stays ``Running`` S seconds, then completes;
  without it jobs complete as soon as they are created (``--job-script`` gives the statuses
  of the first polls instead, e.g. ``Queued,Running``);
- ``--rate-limit N``: N requests/s served across all clients, 429 + ``Retry-After`` beyond;
- ``--latency S``: every served request waits S seconds before it is handled;
- ``--fault-rate F`` and ``--fault-kinds K,K``: a seeded random fault on a fraction F of
  the served requests (500, 502, 503, 429, reset, slow, lost_reply).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.common import PYTHON, REPO, env_with_repo

PLATFORMS = ("nucleus", "edgeimpulse")


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m bench.emulator_server",
                                    description="a platform emulator with the costs of the real service")
    parse.add_argument("platform", choices=PLATFORMS)
    parse.add_argument("--job-seconds", type=float, default=None,
                       help="Nucleus: seconds an async job stays Running (default: jobs follow --job-script)")
    parse.add_argument("--job-script", default="",
                       help="Nucleus: statuses of a job's first polls, comma-separated (default: done at once)")
    parse.add_argument("--rate-limit", type=int, default=0, help="requests/s served across all clients (0: none)")
    parse.add_argument("--retry-after", type=int, default=1, help="Retry-After of a rate-limited reply, seconds")
    parse.add_argument("--latency", type=float, default=0.0, help="seconds each served request waits")
    parse.add_argument("--fault-rate", type=float, default=0.0, help="fraction of served requests given a fault")
    parse.add_argument("--fault-kinds", default="500,502,503,reset,lost_reply",
                       help="faults to pick from, comma-separated (default: %(default)s)")
    parse.add_argument("--seed", type=int, default=1234, help="seed of the fault injection")
    return parse


def command_line(platform_name: str, options: dict[str, Any]) -> list[str]:
    """The arguments of this module for ``options`` named like its flags (``job_seconds=1``)."""
    args = [platform_name]
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if flag not in parser()._option_string_actions:
            raise ValueError(f"the emulator server has no option {flag}")
        args += [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
    return args


class EmulatorServer:
    """A platform emulator served by a child process (``python -m bench.emulator_server``).

    Commands: ``new`` makes a fresh dataset/project and returns its credentials; ``count``
    the items it holds; ``keys`` their keys (Nucleus reference ids, Edge Impulse sample
    names); ``mark`` starts a new request window and zeroes the counters; ``window`` returns
    it (first request start, last request end, request count, in the server's monotonic
    clock; every request answered before the call is in it, see ``Spans``); ``stats`` the
    requests served and refused by the rate limit and the faults injected since ``mark``;
    ``purge`` drops every stored item (memory).
    """

    def __init__(self, platform_name: str, *, cpus: set[int] | None = None, **options: Any):
        self.platform = platform_name
        self.args = command_line(platform_name, options)
        self.cpus = cpus
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._lock = threading.Lock()

    def __enter__(self) -> "EmulatorServer":
        cpus = self.cpus
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.emulator_server", *self.args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env_with_repo(), cwd=REPO,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        hello = json.loads(self.proc.stdout.readline())
        self.url = hello["url"]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        assert self.proc is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"cmd": command, **args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.platform} emulator process exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.platform} emulator: {reply['error']}")
        return reply


class Spans:
    """The requests of the window: ``(start, end, "METHOD /path")`` each, in the server's
    monotonic clock.

    A request's span is complete only once its handler returned, which is after its reply
    went out: a client can hold its last reply before that span is recorded. ``finished``
    therefore first waits for the requests under way when it was called (not for later ones:
    a fleet may still be sending), so a window asked for after the last reply counts it.
    """

    def __init__(self, wait_limit: float = 30.0):
        self._done: list[tuple[float, float, str]] = []
        self._under_way: set[int] = set()
        self._numbers = itertools.count()
        self._changed = threading.Condition()
        self.wait_limit = wait_limit  # a handler stuck longer than this is left out

    def timed(self, dispatch: Callable[[Any, bytes], None]) -> Callable[[Any, bytes], None]:
        """``dispatch`` recording the span of each request it handles."""

        def timed_dispatch(http, body: bytes) -> None:
            with self._changed:
                number = next(self._numbers)
                self._under_way.add(number)
            start = time.monotonic()
            try:
                dispatch(http, body)
            finally:
                with self._changed:
                    self._done.append((start, time.monotonic(), http.command + " " + http.path.split("?")[0]))
                    self._under_way.discard(number)
                    self._changed.notify_all()

        return timed_dispatch

    def finished(self) -> list[tuple[float, float, str]]:
        """Every span, once the requests under way at the call have ended."""
        with self._changed:
            asked = set(self._under_way)
            self._changed.wait_for(lambda: not asked & self._under_way, timeout=self.wait_limit)
            return list(self._done)

    def clear(self) -> None:
        with self._changed:
            self._done.clear()


def _emulator(args: argparse.Namespace):
    """The emulator with its knobs set, and its new/keys/purge commands."""
    if args.platform == "nucleus":
        from tests.emulators.nucleus import NucleusEmulator

        emulator = NucleusEmulator(seed=args.seed, job_script=tuple(s for s in args.job_script.split(",") if s),
                                   job_seconds=args.job_seconds)

        def new() -> dict[str, Any]:
            return {"dataset_id": emulator.add_dataset("bench"), "api_key": emulator.api_key,
                    "endpoint": emulator.endpoint}

        def keys(creds: dict[str, Any]) -> list[str]:
            return [item["reference_id"] for item in emulator.items(creds["dataset_id"])]

        def purge() -> None:
            with emulator.lock:
                emulator.state.items.clear()
                emulator.state.images.clear()
                emulator.state.jobs.clear()
                emulator.state.due.clear()
    else:
        from tests.emulators.edgeimpulse import EdgeImpulseEmulator

        emulator = EdgeImpulseEmulator(seed=args.seed)

        def new() -> dict[str, Any]:
            project = emulator.add_project("bench")
            return {"project_id": project["id"], "api_key": emulator.make_key(project["id"]), "url": emulator.url}

        def keys(creds: dict[str, Any]) -> list[str]:
            with emulator.lock:
                return [s["filename"] for s in emulator.samples.values() if s["projectId"] == creds["project_id"]]

        def purge() -> None:
            with emulator.lock:
                emulator.samples.clear()
                emulator.sample_data.clear()

    emulator.rate_limit.set(args.rate_limit, retry_after=args.retry_after)
    emulator.latency = args.latency
    if args.fault_rate:
        emulator.faults.set_rate(args.fault_rate, tuple(k for k in args.fault_kinds.split(",") if k))
    return emulator, new, keys, purge


def _serve(argv: list[str]) -> None:
    """The child side of EmulatorServer."""
    sys.path.insert(0, str(REPO))
    args = parser().parse_args(argv)
    emulator, new, keys, purge = _emulator(args)
    spans = Spans()
    emulator._dispatch = spans.timed(emulator._dispatch)  # type: ignore[method-assign]
    emulator.start()
    print(json.dumps({"url": emulator.url}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            command = request.pop("cmd")
            if command == "new":
                reply: dict[str, Any] = new()
            elif command == "count":
                reply = {"count": len(keys(request["creds"]))}
            elif command == "keys":
                reply = {"keys": keys(request["creds"])}
            elif command == "mark":
                spans.clear()
                emulator.requests.clear()
                emulator.rate_limit.reset_counts()
                emulator.faults.injected.clear()
                reply = {}
            elif command == "window":
                done = spans.finished()
                reply = {"start": min(s for s, _, _ in done) if done else None,
                         "end": max(e for _, e, _ in done) if done else None, "requests": len(done)}
            elif command == "stats":
                injected: dict[str, int] = {}
                for kind, _, _ in list(emulator.faults.injected):
                    injected[kind] = injected.get(kind, 0) + 1
                reply = {**emulator.rate_limit.counts(), "faults": injected}
            elif command == "spans":
                reply = {"spans": spans.finished()}
            elif command == "purge":
                purge()
                reply = {}
            else:
                reply = {"error": f"unknown command {command!r}"}
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    emulator.stop()


if __name__ == "__main__":
    _serve(sys.argv[1:])
