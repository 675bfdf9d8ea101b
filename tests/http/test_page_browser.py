"""The status page in a real browser: Debian's chromium driven by Playwright, against a real
``syncd run`` that keeps delivering while the page is open.

The browser is the system one (``executable_path``; Playwright never downloads one: the
machine has no internet), headless, with a fresh profile and everything that would reach
out (updates, sync, background networking) switched off. tests/install.sh installs both.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, wait_for
from tests.helpers import write_item
from tests.http.live import free_port, get_json, http_config

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SVG_PATH = re.compile(r"^M[\d.]+ [\d.]+( L[\d.]+ [\d.]+)+$")

# What the page shows of each folder and target, read in one go from the DOM.
READ_COUNTS = """() => Array.from(document.querySelectorAll("table.counts tr[data-target]")).map((row) => ({
  folder: row.dataset.folder, target: row.dataset.target,
  delivered: row.querySelector(".delivered").textContent, pending: row.querySelector(".pending").textContent,
  in_flight: row.querySelector(".in_flight").textContent, failed: row.querySelector(".failed").textContent}))"""


@pytest.fixture
def browser_page(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: run tests/install.sh (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run tests/install.sh (apt-get install chromium)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()


def expected_counts(status: dict) -> list[dict]:
    return [{"folder": f["folder"], "target": t["target"], "delivered": str(t["delivered"]),
             "pending": str(t["pending"]), "in_flight": str(t["in_flight"]), "failed": str(t["failed"])}
            for f in status["folders"] for t in f["targets"]]


def rendered(page, status: dict) -> None:
    """Wait until the page has drawn this /status.json (its time is in the header)."""
    page.wait_for_function("at => document.getElementById('state').textContent === 'as of ' + at",
                           arg=status["generated_at"])


def test_the_page_shows_what_status_json_says_while_the_daemon_delivers(tmp_path, browser_page):
    page = browser_page
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    (tmp_path / "blocker").write_text("a file where the dataset directory should be")
    config = http_config(tmp_path, {"local": {"platform": "local", "path": "synced"},
                                    "blocked": {"platform": "local", "path": "blocker/dataset"}}, port=port,
                         folders=[{"path": "inbox", "targets": ["local"]},
                                  {"path": "second", "targets": ["blocked"]}])
    inbox = tmp_path / "inbox"
    for n in range(5):
        write_item(inbox, f"first/{n}", metadata={"n": n}, seed=n)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    write_item(tmp_path / "second", "held", metadata={})

    stop = threading.Event()
    written = [5]

    def keep_dropping():  # deliveries go on while the page is looked at
        while not stop.wait(0.25) and written[0] < 200:
            write_item(inbox, f"live/{written[0]}", metadata={}, seed=written[0])
            written[0] += 1

    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    writer = threading.Thread(target=keep_dropping, daemon=True)
    with DaemonProcess(config) as daemon:
        wait_for(lambda: _up(port), timeout=60, message="the listener and the journal")
        writer.start()
        try:
            page.goto(base)
            page.evaluate("window.notReloaded = true")
            seen = []
            for _ in range(3):  # three refreshes, each drawn exactly as served
                with page.expect_response(lambda response: response.url == base + "status.json") as reply:
                    pass
                status = reply.value.json()
                rendered(page, status)
                assert page.evaluate(READ_COUNTS) == expected_counts(status)
                seen.append(status["folders"][0]["targets"][0]["delivered"])
            assert seen[0] < seen[-1], f"the daemon was delivering: {seen}"
            assert page.evaluate("window.notReloaded") is True  # refreshed in place, never reloaded
        finally:
            stop.set()
            writer.join(10)

        # The failed item, with the reason status.json gives, and the paused target and why.
        failed = status["folders"][0]["targets"][0]["failed_items"]
        assert [item["key"] for item in failed] == ["broken"]
        line = page.locator('li.failed[data-key="broken"]')
        assert "broken" in line.inner_text() and failed[0]["reason"] in line.locator(".reason").inner_text()
        paused = next(t for t in status["targets"] if t["target"] == "blocked")["paused"]
        assert paused and "Not a directory" in paused
        assert page.locator('#targets tr[data-target="blocked"] .state').inner_text() == f"paused: {paused}"
        assert page.locator('#targets tr[data-target="local"] .state').inner_text() == "ok"
        local = next(t for t in status["targets"] if t["target"] == "local")
        if local["rate_reason"]:  # the rate as syncd status words it ("unlimited" for a directory)
            assert local["rate_reason"] in page.locator('#targets tr[data-target="local"] .rate').inner_text()

        # Backlog and throughput over time as SVG paths with points, drawn with a size.
        for figure in ("spark-backlog", "spark-throughput", "spark-bytes"):
            path = page.locator(f"#{figure} svg path")
            wait_for(lambda: SVG_PATH.match(path.get_attribute("d") or ""), timeout=30,
                     message=f"the {figure} sparkline")
            assert len(re.findall(r"[ML]", path.get_attribute("d"))) >= 2
            box = path.bounding_box()
            assert box is not None and box["width"] > 50, (figure, box)

        # Once everything is delivered the page settles on the same counts as /status.json.
        total = written[0]
        final = wait_for(lambda: (s := get_json(port, "/status.json"))["folders"][0]["targets"][0]["delivered"]
                         == total and s, timeout=60, message=f"{total} items delivered")
        page.wait_for_function("n => Array.from(document.querySelectorAll('td.delivered'))"
                               ".some((cell) => cell.textContent === String(n))", arg=total)
        assert page.evaluate(READ_COUNTS) == expected_counts(final)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert daemon.stop() == 0

    assert errors == [], errors  # no script error, no Content-Security-Policy violation
    outside = [url for url in requests if not url.startswith(base) and not url.startswith("data:")]
    assert outside == [], f"the page reached outside syncd: {outside}"
    assert {base, base + "status.json", base + "history.json"} <= set(requests)


def _up(port: int) -> bool:
    """The listener answers and the daemon has opened its journal (/status.json is 200)."""
    try:
        get_json(port, "/status.json")
        return True
    except (OSError, AssertionError):
        return False
