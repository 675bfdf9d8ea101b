"""The torture run (bench/torture.py) in a small configuration: `syncd run` against every
platform emulator while producers write items every way they can and the daemon is
SIGKILLed, replies are lost, servers fail, rate-limit, reset, crawl and vanish.

The large configuration and its recorded result are in docs/torture.md. The checks the
run applies are tested first on made-up histories, so a pass means something.
"""

from __future__ import annotations

from bench.torture import FAULT_KINDS, TortureConfig, run
from bench.torture_check import history_violations, journal_violations, remote_violations
from bench.torture_platforms import PLATFORMS, Platform, Remote, Write
from bench.torture_producers import CREATE_METHODS, State


class Recorded(Platform):
    """A platform whose remote state and write history are given."""

    def __init__(self, remote: dict, writes: list[Write], marker_kind: str = "version"):
        super().__init__("made-up", [])
        self._remote, self.writes, self.marker_kind = remote, writes, marker_kind

    def remote(self):
        return self._remote


def state(version: str, rev: int) -> State:
    return State(version, f"img{rev}".encode(), f"sha{rev}", {"rev": rev})


STATES = {"a": [state("v0", 0), state("v1", 1), state("v2", 2)]}


def test_history_check_catches_an_older_version_after_a_newer_one():
    ok = Recorded({}, [Write("a", v, None, 0) for v in ("v0", "v1", "v1", "v2")])
    assert history_violations(ok, STATES) == ([], 4)
    back = Recorded({}, [Write("a", v, None, 0) for v in ("v0", "v2", "v1")])
    assert "an older version overwrote a newer one" in history_violations(back, STATES)[0][0]
    invented = Recorded({}, [Write("a", "v9", None, 0)])
    assert "no producer made" in history_violations(invented, STATES)[0][0]
    # Without markers the content decides: two states with the same content are ambiguous,
    # and the check picks the reading that keeps the history monotone when there is one.
    same = {"a": [state("v0", 0), State("v1", b"img0", "sha0", {"rev": 0}), state("v2", 2)]}
    by_content = Recorded({}, [Write("a", None, f"sha{r}|" + '{"rev":%d}' % r, 0) for r in (2, 0)], "content")
    assert "older version" in history_violations(by_content, same)[0][0]


def test_remote_check_catches_duplicates_stale_and_missing_items():
    final = {"a": state("v2", 2), "b": state("v0", 0), "c": state("v0", 0)}
    remote = {"a": [Remote("a", "v1", b"img1", {"rev": 1})],
              "b": [Remote("b", "v0", b"img0", {"rev": 0}), Remote("b", "v0", b"img0", {"rev": 0})],
              "z": [Remote("z", "v0", b"x", {})]}
    problems = "\n".join(remote_violations(Recorded(remote, []), final))
    for expected in ("a: holds version v1, the latest is v2", "a: the remote image differs", "b: 2 remote items",
                     "c: 0 remote items", "remote item 'z' has no local item"):
        assert expected in problems


def test_journal_check_reports_what_is_left():
    status = {"folders": [{"settling": 1, "targets": [
        {"target": "t", "pending": 2, "in_flight": 1, "failed": 1, "failed_items": [{"key": "k", "reason": "r"}]}]}],
        "targets": [{"target": "t", "paused": "HTTP 401"}]}
    assert len(journal_violations(status)) == 5


def test_torture_small(tmp_path):
    config = TortureConfig(workdir=tmp_path, items=150, duration=12.0, kills=2, outages=1, outage_seconds=2.0,
                           converge_timeout=90.0, seed=5)
    report = run(config, log=lambda *args: None)
    assert report.ok, "\n".join(report.violations)
    counts = report.counts
    assert counts["daemon_starts"] == 1 + config.kills
    assert [what for _, what in counts["chaos"]].count("outage") == config.outages
    assert counts["versions_made"] > config.items  # items were edited, many while in flight
    assert {f"write:{m}" for m in CREATE_METHODS} | {"write:burst"} <= set(counts["producer_ops"])
    assert set(counts["platforms"]) == set(PLATFORMS)
    injected: set[str] = set()
    for name, entry in counts["platforms"].items():
        assert entry["items_written"] == config.items, (name, entry)
        injected |= set(entry.get("faults_injected", {}))
    assert injected == set(FAULT_KINDS)
