from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.daemon import Daemon
from syncd.errors import FatalTargetError, SendAlone, SyncdError, TransientError
from syncd.targets.base import JobState, Receipt, Submitted, Target, TargetSettings, Upload
from tests.daemon_harness import write_config


class ScriptedSettings(TargetSettings):
    """A job target's settings (as Nucleus has them), for the scripted fake."""

    job_poll_interval: float = 2.0
    job_timeout: float = 600.0
    max_jobs: int = 32


class ScriptedTarget(Target):
    """An in-memory fake platform: upserts by key, and fails as scripted.

    ``script`` maps an item key to a list of exceptions raised on successive deliveries of
    that key (then it succeeds). ``gate`` (a threading.Event) blocks deliveries until set.

    Batches and jobs (the engine's framework): ``max_batch`` items per ``deliver_batch``
    (each call's keys are in ``batches``); ``batch_script`` lists what successive calls do
    as a whole: an exception to raise, or ``"lose_reply"`` (the items are written, then the
    reply is lost). With ``jobs``, a batch is answered ``Submitted`` (one job per call); a
    job answers ``running`` to its first ``job_polls`` reads, then ``done``; its items are
    written when it is finished (``finish_job``), where ``script`` applies. ``job_script``
    maps a job number (1, 2, ...) to ``"lost"`` (the platform forgets it), ``"stuck"`` (it
    runs for ever), ``"unpinned"`` (an error that names no item: every item gets SendAlone),
    ``"revoked"`` (its first read answers that the key was revoked: FatalTargetError) or
    ``"unreadable"`` (every read fails: TransientError). ``poll_gate`` (an Event) holds every
    job read until set (``poll_entered`` is set when one waits); ``finish_script`` lists
    exceptions raised by successive ``finish_job`` calls (its end cannot be read now).
    """

    platform = "scripted"

    def __init__(self, name: str = "fake", *, create_only: bool = False, workers: int = 2, max_batch: int = 1,
                 jobs: bool = False, **settings):
        super().__init__(name, ScriptedSettings(platform="scripted", workers=workers, **settings))
        self.create_only = create_only
        self.max_batch = max_batch
        self.has_jobs = jobs
        self.items: dict[str, dict] = {}
        self.sent: list[tuple[str, str, bool]] = []  # (key, version, was_update)
        self.script: dict[str, list[Exception]] = {}
        self.check_error: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()  # set when a delivery reached the platform
        self.lock = threading.Lock()
        self.lookups = 0
        self.batches: list[list[str]] = []
        self.batch_script: list[Exception | str] = []
        self.job_polls = 2
        self.job_script: dict[int, str] = {}
        self.jobs: dict[str, dict] = {}  # job id -> {"uploads", "reads", "fate"}
        self.finished: list[tuple[str, list[str]]] = []  # (job id, keys finish_job was given)
        self.handed: list[tuple[str, bool]] = []  # (key, outcome_unknown_at_start) of every batch's uploads
        self.poll_gate: threading.Event | None = None
        self.poll_entered = threading.Event()
        self.finish_script: list[Exception] = []

    def check(self) -> list[str]:
        if self.check_error:
            raise self.check_error
        return []

    def deliver(self, upload: Upload) -> Receipt:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        with self.lock:
            errors = self.script.get(upload.key)
            if errors:
                raise errors.pop(0)
            self.sent.append((upload.key, upload.version, upload.previous is not None))
            self.items[upload.key] = {"version": upload.version, "metadata": upload.metadata, "image": upload.image}
        return Receipt(remote_id=f"id-{upload.key}", extra={"version": upload.version})

    def deliver_batch(self, uploads):
        assert 1 <= len(uploads) <= self.max_batch, f"a batch of {len(uploads)} for max_batch {self.max_batch}"
        with self.lock:
            self.batches.append([upload.key for upload in uploads])
            self.handed += [(upload.key, upload.outcome_unknown_at_start) for upload in uploads]
            whole = self.batch_script.pop(0) if self.batch_script else None
            number = len(self.jobs) + 1
        if isinstance(whole, Exception):
            raise whole
        if whole == "lose_reply":
            super().deliver_batch(uploads)
            raise TransientError("the reply was lost", outcome_unknown=True)
        if not self.has_jobs:
            return super().deliver_batch(uploads)
        job_id = f"job-{number}"
        with self.lock:
            self.jobs[job_id] = {"uploads": list(uploads), "reads": 0, "fate": self.job_script.get(number)}
        return [Submitted(job_id) for _ in uploads]

    def job_state(self, job_id: str) -> JobState:
        if self.poll_gate is not None:
            self.poll_entered.set()
            assert self.poll_gate.wait(10), "poll gate never opened"
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job["fate"] == "lost":
                return JobState("lost")
            if job["fate"] == "revoked":
                job["fate"] = None
                raise FatalTargetError("HTTP 401: the API key was revoked")
            job["reads"] += 1
            if job["fate"] == "unreadable":
                raise TransientError(f"HTTP 503 reading job {job_id}")
            return JobState("running" if job["reads"] <= self.job_polls or job["fate"] == "stuck" else "done")

    def finish_job(self, job_id: str, state: JobState, uploads):
        job = self.jobs[job_id]
        with self.lock:
            failure = self.finish_script.pop(0) if self.finish_script else None
        if failure is not None:
            raise failure
        self.finished.append((job_id, [upload.key for upload in uploads]))
        sent = {upload.key: upload for upload in job["uploads"]}  # the job holds the image bytes
        results: list = []
        for upload in uploads:
            assert upload.version == sent[upload.key].version, "finish_job got another version than the job"
            if job["fate"] == "unpinned":
                results.append(SendAlone(f"job {job_id} failed for an item it does not name"))
                continue
            try:
                results.append(self.deliver(sent[upload.key]))
            except SyncdError as exc:
                results.append(exc)
        return results

    def lookup(self, upload: Upload) -> Receipt | None:
        self.lookups += 1
        with self.lock:
            item = self.items.get(upload.key)
        return None if item is None else Receipt(remote_id=f"id-{upload.key}", extra={"version": item["version"]})


@pytest.fixture
def scripted():
    return ScriptedTarget()


@pytest.fixture
def make_daemon(tmp_path):
    """Build an in-process Daemon (no watches) over tmp_path/inbox with the given targets."""
    made: list[Daemon] = []

    def factory(targets: dict[str, Target] | None = None, *, folder: dict | None = None, daemon: dict | None = None,
                open_now=True):
        names = list(targets) if targets else ["local"]
        tables = {name: {"platform": "local", "path": f"remote-{name}"} for name in names}
        folder_table = {"path": "inbox", "targets": names, **(folder or {})}
        config = load_config(write_config(tmp_path, tables, folders=[folder_table],
                                          daemon={"settle_seconds": 1.0, **(daemon or {})}))
        instance = Daemon(config, targets=targets, watch=False, seed=7)
        if open_now:
            instance.open(time.time())
        made.append(instance)
        return instance

    yield factory
    for instance in made:
        try:
            instance.close(wait_seconds=1)
        except Exception:
            pass


def _pending(daemon: Daemon) -> bool:
    """Deliveries still to do (now or after a backoff) on targets that are not paused."""
    rows = daemon.store.query(
        "SELECT d.target FROM deliveries d JOIN items i ON i.id=d.item_id "
        "WHERE d.state IN ('pending','in_flight') AND i.state='ready'"
    )
    return any(r["target"] not in daemon.held for r in rows)


def drive(daemon: Daemon, *, now: float | None = None, until=None, timeout: float = 20.0, step: float = 5.0) -> float:
    """Tick ``daemon`` until idle (or ``until()``), its clock ``step`` seconds further each pass.

    The clock starts an hour ahead so that every file counts as settled. Returns the clock.
    """
    deadline = time.monotonic() + timeout
    clock = (now or time.time()) + 3600
    while time.monotonic() < deadline:
        clock += step
        daemon.tick(clock)
        daemon._collect(clock, block=0.02)
        if until is not None:
            if until():
                return clock
        elif not daemon.busy() and not daemon.checking and not _pending(daemon):
            return clock
    raise AssertionError("daemon did not become idle")


@pytest.fixture
def inbox(tmp_path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir(exist_ok=True)
    return path
