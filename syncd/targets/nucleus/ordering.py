"""The ordering guarantee of the Nucleus target: an older job never overwrites a newer version.

Nucleus upserts, so a job that runs late writes its (older) version over whatever the item
holds. So an item is never appended while an earlier job that may write it could still run
(docs/platforms/nucleus.md, "Updates and crash recovery"):

- Jobs of this process (``JobBook.submitted``): each key belongs to its last job until that
  job is seen to end (``ended``: by the engine's ``job_state``/``finish_job``, or by the
  target reading it again). When the daemon gives up on a job (``job_timeout``) and sends
  its items again, ``earlier(key)`` still names it; the target reads it before appending,
  and while it still runs the item waits (retried later, nothing sent).
- Jobs from before this process started (a restart): which items they hold is unknown, but
  only an item whose outcome was unknown when the process started can be in one (the
  previous process stopped between sending its append and journaling the job, or left a
  lost reply or a timeout unresolved; a job it journaled is polled by the engine, not
  re-sent). For such an item (``Upload.outcome_unknown_at_start``), ``StartupJobs`` lists
  the dataset's upload and annotation deletion jobs still Queued/Running (``POST jobs/``,
  the SDK's ``Dataset.jobs``) the first time one is delivered, and it is not appended
  until they ended or ``hold`` seconds (the target's ``job_timeout``) passed since they
  were found. The jobs this process started (``StartupJobs.own``) are not among them: the
  listing comes after the first appends, and this process's own jobs are ordered by
  ``JobBook`` (waiting for them held such items, and a worker each, for up to ``hold``
  seconds behind jobs they cannot be in). Every other item goes at once: a daemon started
  on a fresh journal, or one whose previous run ended cleanly, lists nothing and waits for
  no one (in a fleet sharing a dataset, not for the other devices' jobs). A deployment
  refusing the listing (4xx) has nothing waited for, with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from syncd.errors import PermanentError, TransientError
from syncd.targets.nucleus.jobs import FIRST_POLL_DELAY, PENDING

log = logging.getLogger(__name__)

#: The job types waited for after a start (``CustomerJobTypes`` of the SDK).
STARTUP_JOB_TYPES = ("uploadDatasetItems", "annotationDeletion")
STARTUP_WAIT = 5.0  # seconds one delivery waits for them in place before its items retry later
LIST_LIMIT = 1000


class JobBook:
    """Which jobs of this process may still write which items (see the module docstring).
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, str] = {}  # item key -> the last job of this process that may write it
        self._keys: dict[str, tuple[str, ...]] = {}  # job id -> its item keys (jobs not seen to end)

    def submitted(self, job_id: str, keys: Sequence[str]) -> None:
        with self._lock:
            self._keys[job_id] = tuple(keys)
            for key in keys:
                self._by_key[key] = job_id

    def ended(self, job_id: str) -> None:
        """``job_id`` is no longer running (ended or gone): it writes nothing any more."""
        with self._lock:
            for key in self._keys.pop(job_id, ()):
                if self._by_key.get(key) == job_id:
                    del self._by_key[key]

    def keys_of(self, job_id: str) -> tuple[str, ...] | None:
        """The keys a job of this process carries (None: not one of this process's jobs, or
        seen to end)."""
        with self._lock:
            return self._keys.get(job_id)

    def earlier(self, key: str) -> str | None:
        """The job of this process that may still write ``key``, if any."""
        with self._lock:
            return self._by_key.get(key)


class StartupJobs:
    """The dataset's jobs from before the start, waited for before the first appends.

    ``list_jobs(body)`` is the client's ``POST jobs/`` (returns the reply, raises syncd
    errors); ``read_job(job_id)`` reads one job and returns its ``JobState`` status
    (``running``/``done``/``lost``). ``clock``/``sleep`` are parameters for tests."""

    def __init__(self, dataset_id: str, *, list_jobs: Callable[[dict], Any], read_job: Callable[[str], str],
                 hold: float, interval: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.dataset_id = dataset_id
        self._list_jobs = list_jobs
        self._read_job = read_job
        self.hold = hold
        self.interval = interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()  # one thread lists and reads them; the others wait for its answer
        self._found: dict[str, float] | None = None  # job id -> when found (None: not listed yet)
        self._read_at = -1e9
        # Jobs this process started while the listing may still find them (the latest LIST_LIMIT).
        self._own: dict[str, None] = {}
        self._own_lock = threading.Lock()

    def own(self, job_id: str) -> None:
        """``job_id`` was started by this process: never waited for here."""
        with self._own_lock:
            if self._found is None:  # not listed yet: the listing leaves it out
                self._own[job_id] = None
                if len(self._own) > LIST_LIMIT:
                    del self._own[next(iter(self._own))]
                return
        self._found.pop(job_id, None)  # listed while its append's reply was on its way

    def ended(self, job_id: str) -> None:
        if self._found:
            self._found.pop(job_id, None)

    def _waiting(self) -> list[str]:
        """The jobs still to wait for; those found longer than ``hold`` ago are given up."""
        now = self._clock()
        for job_id, found in list((self._found or {}).items()):
            if now - found > self.hold:
                log.warning("Nucleus job %s (from before the start) is still unfinished after %gs: no longer waited "
                            "for", job_id, self.hold)
                self._found.pop(job_id, None)
        return list(self._found or ())

    def wait(self) -> str | None:
        """None when nothing from before the start may still write. Otherwise wait here (up to
        STARTUP_WAIT seconds) and return why the caller's items must wait longer."""
        if self._found is not None and not self._found:
            return None  # the usual case, without a lock
        with self._lock:
            if self._found is None:
                listed = self._list()
                with self._own_lock:
                    self._found = dict.fromkeys((job_id for job_id in listed if job_id not in self._own),
                                                self._clock())
                    self._own = {}
            deadline = self._clock() + min(STARTUP_WAIT, self.hold)
            delay = min(FIRST_POLL_DELAY, self.interval)
            while True:
                if self._clock() - self._read_at >= delay:
                    for job_id in self._waiting():
                        try:
                            if self._read_job(job_id) != "running":
                                self.ended(job_id)
                        except TransientError:
                            pass
                    self._read_at = self._clock()
                waiting = self._waiting()
                if not waiting:
                    return None
                if self._clock() + delay > deadline:
                    return (f"waiting for {len(waiting)} Nucleus job(s) of dataset {self.dataset_id} that were running "
                            "before syncd started to end (an item sent now could be overwritten by an older version); "
                            "retrying")
                self._sleep(delay)
                delay = min(delay * 2, self.interval)

    def _list(self) -> list[str]:
        body = {"dataset_id": self.dataset_id, "job_types": list(STARTUP_JOB_TYPES), "from_date": None,
                "to_date": None, "limit": LIST_LIMIT, "show_completed": False}
        try:
            reply = self._list_jobs(body)
        except PermanentError as exc:
            log.warning("%s; jobs from before the start are not waited for", exc)
            return []
        return [str(job["job_id"]) for job in (reply if isinstance(reply, list) else [])
                if isinstance(job, dict) and job.get("job_id") and job.get("job_last_known_status") in PENDING
                and job.get("job_type", STARTUP_JOB_TYPES[0]) in STARTUP_JOB_TYPES]
