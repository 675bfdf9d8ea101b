"""A real ``syncd run`` with ``[http] listen``: every route over plain HTTP, read-only (405),
the connection bound seen from outside the process, health through a paused target and a
full disk, and the listener's configuration (the deprecated ``[metrics] listen``, a taken
port, an address other machines can reach)."""

from __future__ import annotations

import json
import re
import socket
import time

from syncd.config import load_config
from syncd.http.server import MAX_CONNECTIONS, WORKERS
from tests.daemon_harness import DaemonProcess, run_cli, wait_for, write_config
from tests.faults.test_disk import fill, small_filesystem
from tests.helpers import write_item
from tests.http.live import free_port, get_json, http_config, reachable, request, threads_of, without_time


def delivered(port: int, count: int):
    def check():
        try:
            status = get_json(port, "/status.json")
        except (OSError, AssertionError):
            return None
        return status if status["folders"][0]["targets"][0]["delivered"] == count else None
    return check


def test_every_route_of_a_running_daemon(tmp_path):
    port = free_port()
    config = http_config(tmp_path, port=port, extra="\n[metrics]\ninterval_seconds = 0.2\n")
    for n in range(3):
        write_item(tmp_path / "inbox", f"cam/{n}", metadata={"n": n}, seed=n)
    (tmp_path / "inbox" / "cam" / "broken.png").write_bytes(b"\x89PNG not really")
    with DaemonProcess(config) as daemon:
        status = wait_for(delivered(port, 3), timeout=60, message="3 items delivered, seen on /status.json")
        printed = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
        assert without_time(status) == without_time(printed)
        assert status["folders"][0]["targets"][0]["failed_items"][0]["key"] == "cam/broken"

        code, headers, body = request(port, "/healthz")
        health = json.loads(body)
        assert code == 200 and headers["content-type"] == "application/json"
        assert health["healthy"] and health["problems"] == [] and health["paused_targets"] == []

        history = wait_for(lambda: (h := get_json(port, "/history.json")) and len(h["samples"]) >= 3 and h,
                           timeout=30, message="three history samples")
        assert history["step_seconds"] == 1.0
        assert history["samples"][-1]["delivered"] == 3 and history["samples"][-1]["bytes"] > 0

        def metrics():
            text = request(port, "/metrics")[2].decode()
            return text if 'syncd_deliveries{target="local",state="acked"} 3' in text else None
        text = wait_for(metrics, timeout=20, message="metrics with 3 acked deliveries")
        sent = int(re.search(r'^syncd_sent_bytes_total\{target="local"\} (\d+)$', text, re.M).group(1))
        on_disk = sum(p.stat().st_size for p in (tmp_path / "synced").rglob("*") if p.is_file() and
                      not p.name.startswith("."))
        assert sent >= on_disk > 0  # everything written counted (a record rewritten may count twice)
        for role, path in (("state", tmp_path / "state"), ("folder", tmp_path / "inbox")):
            assert re.search(rf'^syncd_filesystem_free_bytes\{{role="{role}",path="{path}"\}} \d+$', text, re.M), role

        code, headers, page = request(port, "/")
        assert code == 200 and headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in headers["content-security-policy"]
        # Self-contained: nothing is loaded from anywhere else.
        assert not re.search(rb"""(src|href)\s*=\s*["']?(https?:)?//""", page)
        assert b"<script src" not in page and b"@import" not in page and b"url(" not in page

        code, headers, body = request(port, "/", method="HEAD")
        assert code == 200 and body == b"" and int(headers["content-length"]) == len(page)
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            code, headers, _ = request(port, "/status.json", method=method, body=b"{}")
            assert (code, headers["allow"]) == (405, "GET, HEAD"), method
        assert request(port, "/nothing")[0] == 404
        assert request(port, "/status.json", headers={"Host": "attacker.example:9464"})[0] == 403
        assert request(port, "/status.json", headers={"Host": f"localhost:{port}"})[0] == 200
        assert daemon.stop() == 0
    assert f"serving http://127.0.0.1:{port}/" in daemon.logs()


def test_idle_connections_hold_no_threads_and_the_page_still_answers(tmp_path):
    port = free_port()
    config = http_config(tmp_path, port=port)
    write_item(tmp_path / "inbox", "a", metadata={})
    with DaemonProcess(config) as daemon:
        wait_for(delivered(port, 1), timeout=60, message="the item delivered")
        request(port, "/")
        # The pool starts its WORKERS threads as requests come: at most that many more.
        bound = threads_of(daemon.proc.pid) + WORKERS
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(400)]
        try:
            time.sleep(1.0)
            assert threads_of(daemon.proc.pid) <= bound  # was 406 threads with a thread per connection
            for _ in range(3):
                code, _, page = request(port, "/", timeout=5)
                assert code == 200 and b"<svg" in page
            assert request(port, "/healthz", timeout=5)[0] == 200
            assert threads_of(daemon.proc.pid) <= bound
            held = 0
            for sock in idle:
                sock.setblocking(False)
                try:
                    held += sock.recv(1) != b""
                except BlockingIOError:
                    held += 1
                except ConnectionResetError:
                    pass
            assert held <= MAX_CONNECTIONS
        finally:
            for sock in idle:
                sock.close()
        assert daemon.stop() == 0


def test_health_reports_a_paused_target_and_fails_while_the_disk_is_full(tmp_path):
    port = free_port()
    (tmp_path / "blocker").write_text("a file where the dataset directory should be")
    state = tmp_path / "state"
    with small_filesystem(state, "16m"):
        config = http_config(tmp_path, {"local": {"platform": "local", "path": "synced"},
                                        "blocked": {"platform": "local", "path": "blocker/dataset"}}, port=port)
        write_item(tmp_path / "inbox", "a", metadata={})
        with DaemonProcess(config) as daemon:
            def paused():
                if not reachable(port):
                    return None
                code, _, body = request(port, "/healthz")
                health = json.loads(body)
                return (code, health) if health["paused_targets"] else None
            code, health = wait_for(paused, timeout=30, message="the blocked target paused")
            assert code == 200 and health["healthy"]
            assert health["paused_targets"][0]["target"] == "blocked"
            assert "Not a directory" in health["paused_targets"][0]["reason"]

            filler = fill(state)
            write_item(tmp_path / "inbox", "b", metadata={})  # the daemon must journal it: ENOSPC

            def unhealthy():
                code, _, body = request(port, "/healthz")
                return json.loads(body) if code == 503 else None
            health = wait_for(unhealthy, timeout=30, message="healthz 503 on a full disk")
            assert any("is full" in problem for problem in health["problems"]), health
            assert any(problem.startswith("the journal cannot be written: the disk holding") for problem in
                       health["problems"]) or any("filesystem of the state directory" in p for p in health["problems"])

            filler.unlink()
            wait_for(lambda: request(port, "/healthz")[0] == 200, timeout=30, message="healthy again")
            assert daemon.stop() == 0


def test_metrics_listen_still_works_as_a_deprecated_alias(tmp_path):
    port = free_port()
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    with DaemonProcess(config) as daemon:
        wait_for(lambda: reachable(port) and request(port, "/healthz")[0] == 200, timeout=60,
                 message="the listener, healthy after the first pass")
        assert request(port, "/")[0] == 200
        assert daemon.stop() == 0
    assert f"metrics.listen is deprecated: write [http] listen = '127.0.0.1:{port}' instead" in daemon.logs()


def test_two_different_listen_addresses_are_a_configuration_error(tmp_path):
    config = http_config(tmp_path, port=9464, extra='\n[metrics]\nlisten = "127.0.0.1:9465"\n')
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "metrics.listen: '127.0.0.1:9465' differs from http.listen '127.0.0.1:9464'" in result.stderr


def test_a_taken_port_is_one_error_line_and_deliveries_go_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = http_config(tmp_path, port=port)
        write_item(tmp_path / "inbox", "a", metadata={})
        with DaemonProcess(config) as daemon:
            wait_for(lambda: (tmp_path / "synced" / "a.json").exists(), timeout=60, message="a delivered")
            assert daemon.stop() == 0
    logs = daemon.logs()
    assert "Traceback" not in logs
    assert (f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use (another syncd or exporter?); "
            "deliveries go on without the status page, /healthz and /metrics") in logs


def test_an_address_other_machines_reach_is_a_warning(tmp_path):
    config = write_config(tmp_path, {"local": {"platform": "local", "path": "synced"}})
    config.write_text(config.read_text() + '\n[http]\nlisten = "0.0.0.0:9464"\n')
    warnings = load_config(config).warnings
    assert any("http.listen: 0.0.0.0:9464 can be reached from other machines" in w for w in warnings), warnings
    for loopback in ("127.0.0.1:9464", "[::1]:9464", "localhost:9464", "127.0.0.2:80"):
        config.write_text(re.sub(r'listen = ".*"', f'listen = "{loopback}"', config.read_text()))
        assert not load_config(config).warnings, loopback
