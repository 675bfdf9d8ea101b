"""Outstanding remote jobs (Nucleus' asynchronous appends), per target, and when to poll them.

A delivery a target answered ``Submitted`` for stays in flight, held by its job, until the
job ends. ``JobBook`` is the coordinator's list of those jobs: each is polled by the one poll
task of its target (syncd.dispatch) with a backoff of 0.2 s, 0.4 s, ... up to the target's
``job_poll_interval``, until a job of the target was seen ending: from then on a job is first
read at about when the target's jobs end (``EXPECT_LEAD`` of how long they took, learned),
then soon after (``EXPECT_STEP`` of it, doubling; never more than ``job_poll_interval``
apart), so its items are not left waiting for a backoff that overshot the job; nothing is
polled when no job is outstanding; a target holds at most
``max_jobs`` jobs (new batches wait); a job running longer than ``job_timeout`` is given
up (its items are sent again: the target guarantees an older job never overwrites a newer
version). The journal lists the jobs (``jobs`` table) so a restart polls them instead of
re-sending their items; their uploads are then read again when the job ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.items.convention import ItemFiles
from syncd.journal.store import DueDelivery
from syncd.targets import Target
from syncd.targets.base import Upload

FIRST_POLL = 0.2  # seconds before the first poll of a job; doubled after every poll
DEFAULT_POLL_INTERVAL = 2.0  # the longest pause between polls, for targets without job_poll_interval
DEFAULT_JOB_TIMEOUT = 600.0  # for targets without job_timeout
DEFAULT_MAX_JOBS = 32  # outstanding jobs per target, for targets without max_jobs
# Once a target's jobs were seen ending (how long they take: ``JobBook.typical``, learned from
# each job of this run seen done, weight LEARN_WEIGHT per job), a job is first read at
# EXPECT_LEAD of that time and, if still running, after EXPECT_STEP of it (at least MIN_STEP s),
# doubling. Reading a little early lets the estimate follow jobs that got faster (a job found
# done at the first read says it took at most that long); a doubling backoff from 0.2 s reads a
# 1 s job at 1.4 s, and a cap of jobs outstanding then holds the next batches back that long.
EXPECT_LEAD = 0.9
EXPECT_STEP = 0.1
MIN_STEP = 0.05
LEARN_WEIGHT = 0.3


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
    restored: bool = False  # left by an earlier run (its submission time says nothing of its length)
    running_at: float | None = None  # when it was last read still running


class JobBook:
    """Every target's outstanding jobs (see the module docstring)."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self.jobs: dict[str, dict[str, Job]] = {name: {} for name in targets}
        self.polling: set[str] = set()  # targets with a poll task out
        self.typical: dict[str, float] = {}  # target -> seconds its jobs take until seen done (learned)

    def _setting(self, target: str, name: str, default: float) -> float:
        return getattr(self.targets[target].settings, name, default)

    def add(self, target: str, job_id: str, item: tuple[DueDelivery, Upload | None, ItemFiles | None], *,
            now: float, submitted_at: float | None = None, polls: int = 0) -> Job:
        """Record that ``job_id`` holds ``item`` (the job is created on its first item)."""
        job = self.jobs[target].get(job_id)
        if job is None:
            restored = submitted_at is not None
            delay = self._delay(target, polls, restored)
            job = Job(target, job_id, submitted_at if restored else now, None if restored else now, now + delay, polls,
                      restored=restored)
            self.jobs[target][job_id] = job
        job.items.append(item)
        return job

    def _delay(self, target: str, polls: int, restored: bool = False) -> float:
        """Seconds from now to the next read of a job of ``target`` read ``polls`` times so far."""
        interval = self._setting(target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        typical = self.typical.get(target)
        if typical is None or restored:
            return min(FIRST_POLL * 2 ** polls, interval)
        if polls == 0:
            return min(max(MIN_STEP, EXPECT_LEAD * typical), interval)
        return min(max(MIN_STEP, EXPECT_STEP * typical) * 2 ** (polls - 1), interval)

    def ended(self, job: Job, now: float) -> None:
        """``job`` was read and found ended: learn how long the target's jobs take, and read its
        other running jobs no later than that (the first jobs were scheduled without knowing)."""
        if job.restored or not 0 < now - job.submitted_at < 3600.0:
            return
        # It ended between its last read that found it running and this one: the middle of
        # that span (a read backing off from 0.2 s can come up to twice the job's time late).
        took = now - job.submitted_at
        if job.running_at is not None and job.submitted_at <= job.running_at <= now:
            took = (job.running_at - job.submitted_at + took) / 2
        before = self.typical.get(job.target)
        typical = took if before is None else before + LEARN_WEIGHT * (took - before)
        self.typical[job.target] = typical
        interval = self._setting(job.target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        for other in self.jobs[job.target].values():
            if other.restored or other.finishing or other is job:
                continue
            expected = other.submitted_at + min(max(MIN_STEP, EXPECT_LEAD * typical), interval)
            if now <= expected < other.next_poll_at:  # (an expected end already past: its read stays)
                other.next_poll_at = expected

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

    def poll_later(self, job: Job, now: float, *, at_least: float = 0.0, running: bool = False) -> None:
        """The job is still running (or could not be read): read it again after a backoff."""
        if running:
            job.running_at = now
        job.polls += 1
        job.next_poll_at = now + max(self._delay(job.target, job.polls, job.restored), min(at_least, 3600.0))

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
        """What a failed pass must put back: each job's fields a pass changes, as a tuple (a
        pass only appends to a job's items). Taken by every pass: kept cheap."""
        return ({t: {i: (j, j.timer_start, j.next_poll_at, j.polls, j.finishing, len(j.items)) for i, j in jobs.items()}
                 for t, jobs in self.jobs.items()}, set(self.polling))

    def restore(self, saved) -> None:
        jobs, self.polling = saved
        self.jobs = {target: {} for target in jobs}
        for target, kept in jobs.items():
            for job_id, (job, timer_start, next_poll_at, polls, finishing, count) in kept.items():
                job.timer_start, job.next_poll_at, job.polls = timer_start, next_poll_at, polls
                job.finishing = finishing
                del job.items[count:]
                self.jobs[target][job_id] = job
