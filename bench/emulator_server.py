"""A platform emulator in its own process, for the throughput benchmark.

The code under test never shares a GIL with the server. ``EmulatorServer`` starts
``python -m bench.emulator_server PLATFORM [OPTIONS_JSON]`` and drives it over a line
protocol on stdin/stdout; the server reports the *window* of a run: from the first request it
received to the end of the last (its own monotonic clock).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import PYTHON, REPO, env_with_repo


class EmulatorServer:
    """A platform emulator served by a child process (``python -m bench.common serve ...``).

    Commands (one JSON object per line each way): ``new`` makes a fresh dataset/project and
    returns its credentials; ``count`` the items it holds; ``mark`` starts a new request
    window; ``window`` returns it (first request start, last request end, request count, in
    the server's monotonic clock); ``purge`` drops every stored item (memory).
    """

    def __init__(self, platform_name: str, **options: Any):
        self.platform = platform_name
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._lock = threading.Lock()

    def __enter__(self) -> "EmulatorServer":
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.emulator_server", self.platform, json.dumps(self.options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env_with_repo(), cwd=REPO)
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


def _serve(platform_name: str, options: dict[str, Any]) -> None:
    """The child side of EmulatorServer."""
    sys.path.insert(0, str(REPO))
    window: list[tuple[float, float]] = []

    if platform_name == "nucleus":
        from tests.emulators.nucleus import NucleusEmulator

        emulator = NucleusEmulator(job_script=tuple(options.get("job_script", ())))

        def new() -> dict[str, Any]:
            return {"dataset_id": emulator.add_dataset("bench"), "api_key": emulator.api_key,
                    "endpoint": emulator.endpoint}

        def count(creds: dict[str, Any]) -> int:
            return len(emulator.items(creds["dataset_id"]))

        def purge() -> None:
            with emulator.lock:
                emulator.state.items.clear()
                emulator.state.images.clear()
                emulator.state.jobs.clear()
    elif platform_name == "edgeimpulse":
        from tests.emulators.edgeimpulse import EdgeImpulseEmulator

        emulator = EdgeImpulseEmulator()

        def new() -> dict[str, Any]:
            project = emulator.add_project("bench")
            return {"project_id": project["id"], "api_key": emulator.make_key(project["id"]), "url": emulator.url}

        def count(creds: dict[str, Any]) -> int:
            with emulator.lock:
                return sum(1 for s in emulator.samples.values() if s["projectId"] == creds["project_id"])

        def purge() -> None:
            with emulator.lock:
                emulator.samples.clear()
                emulator.sample_data.clear()
    else:
        raise SystemExit(f"unknown platform {platform_name!r}")

    dispatch = emulator._dispatch

    def timed(http, body):
        start = time.monotonic()
        try:
            dispatch(http, body)
        finally:
            window.append((start, time.monotonic(), http.command + " " + http.path.split("?")[0]))

    emulator._dispatch = timed  # type: ignore[method-assign]
    emulator.start()
    print(json.dumps({"url": emulator.url}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            command = request.pop("cmd")
            if command == "new":
                reply: dict[str, Any] = new()
            elif command == "count":
                reply = {"count": count(request["creds"])}
            elif command == "mark":
                window.clear()
                emulator.requests.clear()
                reply = {}
            elif command == "window":
                spans = list(window)
                reply = {"start": min(s for s, _, _ in spans) if spans else None,
                         "end": max(e for _, e, _ in spans) if spans else None, "requests": len(spans)}
            elif command == "spans":
                reply = {"spans": list(window)}
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
    if len(sys.argv) >= 2:
        _serve(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    else:
        raise SystemExit("usage: python -m bench.emulator_server nucleus|edgeimpulse [OPTIONS_JSON]")
