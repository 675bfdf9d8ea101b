"""Outstanding remote jobs (Nucleus' asynchronous appends), per target, and when to poll them.

A delivery a target answered ``Submitted`` for stays in flight, held by its job, until the
job ends. ``JobBook`` is the coordinator's list of those jobs: each is polled by the one poll
task of its target (syncd.dispatch) with a backoff of 0.2 s, 0.4 s, ... up to the target's
``job_poll_interval``; nothing is polled when no job is outstanding; a target holds at most
``max_jobs`` jobs (new batches wait); a job running longer than ``job_timeout`` is given
up (its items are sent again: the target guarantees an older job never overwrites a newer
version). The journal lists the jobs (``jobs`` table) so a restart polls them instead of
re-sending their items; their uploads are then read again when the job ends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from syncd.items.convention import ItemFiles
from syncd.journal.store import DueDelivery
from syncd.targets import Target
from syncd.targets.base import Upload

FIRST_POLL = 0.2  # seconds before the first poll of a job; doubled after every poll
DEFAULT_POLL_INTERVAL = 2.0  # the longest pause between polls, for targets without job_poll_interval
DEFAULT_JOB_TIMEOUT = 600.0  # for targets without job_timeout
DEFAULT_MAX_JOBS = 32  # outstanding jobs per target, for targets without max_jobs


@dataclass
class Job:
    """One outstanding job and the deliveries it holds (``upload`` None: not kept, read again)."""

    target: str
    job_id: str
    submitted_at: float
    timer_start: float | None  # job_timeout counts from here (None: from the next pass; a restart
    # gives a job its full time again)
    next_poll_at: float
    polls: int = 0
    items: list[tuple[DueDelivery, Upload | None, ItemFiles | None]] = field(default_factory=list)
    finishing: bool = False  # a finish task is out


class JobBook:
    """Every target's outstanding jobs (see the module docstring)."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self.jobs: dict[str, dict[str, Job]] = {name: {} for name in targets}
        self.polling: set[str] = set()  # targets with a poll task out

    def _setting(self, target: str, name: str, default: float) -> float:
        return getattr(self.targets[target].settings, name, default)

    def add(self, target: str, job_id: str, item: tuple[DueDelivery, Upload | None, ItemFiles | None], *,
            now: float, submitted_at: float | None = None, polls: int = 0) -> Job:
        """Record that ``job_id`` holds ``item`` (the job is created on its first item)."""
        job = self.jobs[target].get(job_id)
        if job is None:
            delay = min(FIRST_POLL * 2 ** polls, self._setting(target, "job_poll_interval", DEFAULT_POLL_INTERVAL))
            restored = submitted_at is not None
            job = Job(target, job_id, submitted_at if restored else now, None if restored else now, now + delay, polls)
            self.jobs[target][job_id] = job
        job.items.append(item)
        return job

    def get(self, target: str, job_id: str) -> Job | None:
        return self.jobs[target].get(job_id)

    def remove(self, target: str, job_id: str) -> Job | None:
        return self.jobs[target].pop(job_id, None)

    def count(self, target: str) -> int:
        return len(self.jobs[target])

    def room(self, target: str) -> int:
        """How many more jobs ``target`` may hold (no new batch while there is no room)."""
        return int(self._setting(target, "max_jobs", DEFAULT_MAX_JOBS)) - len(self.jobs[target])

    def due_polls(self, target: str, now: float) -> list[str]:
        """Jobs of ``target`` to read now (none while its poll task is out)."""
        if target in self.polling:
            return []
        interval = self._setting(target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        due = []
        for job in self.jobs[target].values():
            if job.next_poll_at - now > interval:  # set under a clock since set back
                job.next_poll_at = now
            if not job.finishing and job.next_poll_at <= now:
                due.append(job.job_id)
        return due

    def timed_out(self, target: str, now: float) -> list[Job]:
        """Jobs of ``target`` running longer than its ``job_timeout``."""
        timeout = self._setting(target, "job_timeout", DEFAULT_JOB_TIMEOUT)
        out = []
        for job in self.jobs[target].values():
            if job.timer_start is None or job.timer_start > now:  # restored, or the clock was set back
                job.timer_start = now
            if not job.finishing and now - job.timer_start > timeout:
                out.append(job)
        return out

    def poll_later(self, job: Job, now: float, *, at_least: float = 0.0) -> None:
        """The job is still running (or could not be read): read it again after a backoff."""
        job.polls += 1
        interval = self._setting(job.target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        job.next_poll_at = now + max(min(FIRST_POLL * 2 ** job.polls, interval), min(at_least, 3600.0))

    def next_deadline(self, paused: dict[str, float]) -> float | None:
        """The earliest poll or timeout of a target that is not paused (None: no job)."""
        times = []
        for target, jobs in self.jobs.items():
            if not jobs or target in paused:
                continue
            timeout = self._setting(target, "job_timeout", DEFAULT_JOB_TIMEOUT)
            for job in jobs.values():
                if not job.finishing:
                    times.append(job.timer_start + timeout if job.timer_start is not None else 0.0)
                    if target not in self.polling:
                        times.append(job.next_poll_at)
        return min(times) if times else None

    # -- a failed pass --------------------------------------------------------------------------
    def snapshot(self):
        """What a failed pass must put back (cheap: jobs are few)."""
        return {t: {i: _shallow(j) for i, j in jobs.items()} for t, jobs in self.jobs.items()}, set(self.polling)

    def restore(self, saved) -> None:
        self.jobs, self.polling = saved


def _shallow(job: Job) -> Job:
    """A copy of ``job`` whose item list can change without touching the original."""
    clone = copy.copy(job)
    clone.items = list(job.items)
    return clone
