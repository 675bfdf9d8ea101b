"""Operations: per-target request rate, global bandwidth, Prometheus metrics."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from syncd import limits
from syncd.targets.http import SessionPool, send
from tests.daemon_harness import DaemonProcess, run_once, wait_for, write_config
from tests.emulators.base import Emulator, json_response, route
from tests.helpers import write_item


class Echo(Emulator):
    name = "echo"

    @route("POST", "/upload")
    def upload(self, request):
        return json_response({"size": len(request.body)})


class FakeClock:
    """Time as a parameter: sleeping advances nothing (``advancing``: it advances the clock),
    so debts add up deterministically."""

    def __init__(self, *, advancing: bool = False):
        self.now = 100.0
        self.slept: list[float] = []
        self.advancing = advancing

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        if self.advancing:
            self.now += seconds


def test_token_bucket_pays_debts_at_the_rate():
    clock = FakeClock()
    bucket = limits.TokenBucket(2.0, clock=clock.clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5]
    clock.now += 10  # a quiet period refills up to the burst only
    assert bucket.acquire() == 0.0 and bucket.acquire() == 0.0 and bucket.acquire() > 0


@pytest.fixture
def echo():
    with Echo() as emulator:
        yield emulator
    limits.configure({}, 0)


def test_rate_limit_applies_to_the_target_being_served(echo):
    clock = FakeClock(advancing=True)
    limits.configure({"slow": 2.0}, 0, clock=clock.clock, sleep=clock.sleep)
    session = SessionPool().get()
    with limits.serving("slow"):
        for _ in range(4):
            send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"x")
    assert clock.slept == [pytest.approx(0.5)] * 3  # paced at 2/s (syncd.rate: no burst)
    clock.slept.clear()
    with limits.serving("other"):  # no limit configured for it
        send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"x")
    assert clock.slept == []


def test_bandwidth_limit_pays_for_body_bytes(echo):
    clock = FakeClock()
    limits.configure({}, 5000, clock=clock.clock, sleep=clock.sleep)
    session = SessionPool().get()
    with limits.serving("any"):
        reply = send(session, "POST", echo.url + "/upload", context="t", timeout=5, data=b"\0" * 10000)
    assert reply.json() == {"size": 10000}
    assert clock.slept == [pytest.approx(1.0)]  # 5000 bytes of burst, 5000 more at 5000 B/s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_endpoint_and_textfile(tmp_path):
    port = free_port()
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    text = (config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
            'textfile = "metrics/syncd.prom"\ninterval_seconds = 0.2\n')
    config.write_text(text)
    write_item(tmp_path / "inbox", "a", metadata={})
    write_item(tmp_path / "inbox", "b", metadata={})
    with DaemonProcess(config) as daemon:
        def scrape():
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return None
            return body if 'syncd_deliveries{target="local",state="acked"} 2' in body else None

        body = wait_for(scrape, timeout=20, message="metrics with 2 acked deliveries")
        assert 'syncd_target_paused{target="local"} 0' in body
        assert 'syncd_delivery_attempts_total{target="local",outcome="acked"} 2' in body
        textfile = tmp_path / "metrics" / "syncd.prom"
        wait_for(lambda: textfile.exists() and "syncd_items_settling 0" in textfile.read_text(), timeout=10,
                 message="textfile")
        assert daemon.stop() == 0


def test_bad_metrics_address_is_a_config_error(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    config.write_text(config.read_text() + '\n[metrics]\nlisten = "9464"\n')
    result = run_once(config)
    assert result.returncode == 2 and "metrics.listen" in result.stderr
