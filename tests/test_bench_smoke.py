"""The issue-9 benchmarks run end to end at toy sizes: each completes, delivers everything
and reports sane figures. No timing assertions: the figures themselves are for
docs/benchmarks.md, measured at full size.

Each benchmark runs as a user runs it (``python -m bench.<name>``), with its data under
``SYNCD_BENCH_DIR`` and its report under ``SYNCD_BENCH_OUT`` (both in tmp_path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
import requests

from bench.emulator_server import EmulatorServer, Spans, command_line
from tests.daemon_harness import REPO


def run_bench(tmp_path, module: str, *args: str) -> dict:
    env_out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SYNCD_BENCH_DIR": str(tmp_path / "data"), "SYNCD_BENCH_OUT": str(env_out),
             "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = args[args.index("--name") + 1]
    return json.loads((env_out / f"{name}.json").read_text())


def rows_by(report: dict, *columns: int) -> dict:
    return {tuple(row[c] for c in columns): row for row in report["rows"]}


def test_emulator_server_options_become_its_command_line():
    assert command_line("nucleus", {"job_seconds": 1.0, "rate_limit": 40, "fault_kinds": ("500", "reset"),
                                    "latency": None}) == \
        ["nucleus", "--job-seconds", "1.0", "--rate-limit", "40", "--fault-kinds", "500,reset"]
    with pytest.raises(ValueError, match="no option --job-secs"):
        command_line("nucleus", {"job_secs": 1})


def test_emulator_server_rate_limits_and_counts():
    with EmulatorServer("edgeimpulse", rate_limit=1, retry_after=7) as emulator:
        emulator.call("mark")
        with requests.Session() as http:
            codes = []
            for _ in range(50):  # one served per second: a 429 comes within two requests
                reply = http.get(f"{emulator.url}/no/such")
                codes.append(reply.status_code)
                if reply.status_code == 429:
                    assert reply.headers["Retry-After"] == "7"
                    break
        stats = emulator.call("stats")
        window = emulator.call("window")
    assert codes[0] == 404 and codes[-1] == 429
    assert stats["served"] == codes.count(404) and stats["refused"] == 1
    assert window["requests"] == len(codes)


def test_a_window_asked_after_the_last_reply_counts_that_request():
    # The span of a request is recorded when its handler returns, after the reply went out:
    # a client holding its last reply could ask for the window before that (a full-suite flake
    # of the test above: one request short). The window waits for the requests under way.
    spans = Spans()
    replied, release = threading.Event(), threading.Event()

    def dispatch(http, body):
        replied.set()  # the reply is out; the handler has not returned yet
        release.wait()

    handler = threading.Thread(target=spans.timed(dispatch), args=(SimpleNamespace(command="GET", path="/a?x=1"), b""))
    handler.start()
    replied.wait()
    releaser = threading.Timer(0.2, release.set)  # returns while `finished` waits (or, loaded, before: also fine)
    releaser.start()
    try:
        assert [what for _, _, what in spans.finished()] == ["GET /a"]
    finally:
        release.set()
        releaser.cancel()
        handler.join()
    spans.clear()
    assert spans.finished() == []  # nothing under way: no wait


def test_throughput_smoke(tmp_path):
    report = run_bench(tmp_path, "bench.throughput", "--items", "6", "--rounds", "1", "--contenders",
                       "syncd,syncd-decode,hand", "--job-seconds", "0.2", "--taskset", "0", "--name", "t")
    rows = rows_by(report, 0, 1)
    assert set(rows) == {(p, k) for p in ("nucleus", "edgeimpulse") for k in ("syncd", "syncd-decode", "hand")}
    for (platform, kind), row in rows.items():
        rate, requests_per_item = row[2], row[6]
        assert rate > 0, row
        assert requests_per_item > 0, row  # under 1 when items go in batches (Nucleus: up to 10 per append)
        uploader_ms, emulator_ms = (float(v) for v in row[7].split(","))
        assert uploader_ms > 0 and emulator_ms >= 0, row
    assert rows[("nucleus", "hand")][6] == 1  # one synchronous append per item, no job
    assert report["facts"]["job_seconds"] == 0.2 and report["facts"]["taskset"] == 0


def test_image_check_smoke(tmp_path):
    report = run_bench(tmp_path, "bench.image_check", "--copies", "4", "--name", "ic")
    rows = rows_by(report, 0, 1)
    assert set(rows) == {(f, c) for f in ("JPEG", "PNG") for c in ("structure", "decode")}
    for row in rows.values():
        assert row[2] > 0, row
        assert row[3] == "100%", row  # every cut copy refused, by either check
        assert row[8] == "100%" or row[1] == "decode", row  # a random tail: the structure check refuses it


def test_local_copy_smoke(tmp_path):
    report = run_bench(tmp_path, "bench.local_copy", "--items", "12", "--rounds", "1", "--name", "l")
    rows = rows_by(report, 0)
    assert set(rows) == {("syncd",), ("copier",)}
    for row in rows.values():
        wall, cpu = row[1], row[2]
        assert wall > 0 and cpu > 0, row
    assert rows[("copier",)][4] == 1 and rows[("syncd",)][4] > 0


@pytest.mark.parametrize("platform", ["nucleus", "edgeimpulse"])
def test_fleet_smoke(tmp_path, platform):
    report = run_bench(tmp_path, "bench.fleet", "--devices", "2", "--items", "3", "--platform", platform,
                       "--rate-limit", "40", "--fault-rate", "0.1", "--job-seconds", "0.2", "--max-wait", "240",
                       "--name", "f")
    facts = report["facts"]
    assert facts["everything_delivered"], facts["devices_detail"]
    assert [d["held"] for d in facts["devices_detail"]] == [3, 3]
    assert facts["delivered"] == 6
    assert facts["served"] > 0 and facts["refused"] >= 0
    assert facts["served"] + facts["refused"] == facts["requests"]
    figures = rows_by(report, 0)
    assert figures[("items the platform holds",)][1] == "6 of 6"
