"""Outstanding remote jobs (Nucleus' asynchronous appends), per target, and when to poll them.

A delivery a target answered ``Submitted`` for stays in flight, held by its job, until the
job ends. ``JobBook`` is the coordinator's list of those jobs: each is polled by a poll task
of its target (syncd.dispatch; up to ``workers`` of them at once, each reading its share of
the jobs due, as each read is a round trip) with a backoff of 0.2 s, 0.4 s, ... up to the target's
``job_poll_interval``, until a job of the target was seen ending: from then on a job is first
read at about when the target's jobs end (``EXPECT_LEAD`` of how long they took, learned),
then soon after (``EXPECT_STEP`` of it, doubling; never more than ``job_poll_interval``
apart), so its items are not left waiting for a backoff that overshot the job. Before that,
a job read still running at some age says the target's jobs take at least that long: the
younger jobs are not read before they are as old (``seen_running``); nothing is
polled when no job is outstanding; a target holds at most ``max_jobs`` jobs (new batches
wait). The journal lists the jobs (``jobs`` table) so a restart polls them instead of
re-sending their items; their uploads are then read again when the job ends.

A job is given up (its items are sent again: the target guarantees an older job never
overwrites a newer version) only on what a read of it says (``overdue``): read still
running more than ``job_timeout`` after it was submitted (after a restart: after the first
pass), or not readable at all for ``job_timeout``. Never on the coordinator's clock alone:
a job whose read is under way, or whose reads waited for the target's rate, is not known
to be running, and giving it up re-sent items a finished job had written (each re-send a
new job to poll at the same throttled rate: under load, a cascade that left deliveries in
flight for minutes). A job read as ended (``ended``) is never given up: when its end (its
errors) cannot be read now, that read is tried again after the backoff, without reading
the job again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncd.items.convention import ItemFiles
from syncd.journal.store import DueDelivery
from syncd.targets import Target
from syncd.targets.base import JobState, Upload

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
    next_poll_at: float  # the next read of the job, or of its end once it ``ended``
    polls: int = 0
    items: list[tuple[DueDelivery, Upload | None, ItemFiles | None]] = field(default_factory=list)
    finishing: bool = False  # a finish task is out
    ended: JobState | None = None  # read as ended: its end is read (again) at next_poll_at
    read_at: float | None = None  # the last successful read (None: none since timer_start)
    restored: bool = False  # left by an earlier run (its submission time says nothing of its length)
    running_at: float | None = None  # when it was last read still running
    reading: bool = False  # a poll task that reads it is out


class JobBook:
    """Every target's outstanding jobs (see the module docstring)."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self.jobs: dict[str, dict[str, Job]] = {name: {} for name in targets}
        self.polling: dict[str, int] = {}  # target -> poll tasks out (no entry: none)
        self.typical: dict[str, float] = {}  # target -> seconds its jobs take until seen done (learned)
        # target -> the greatest age at which a job of it was read still running, this run: until
        # ``typical`` is learned, no job is read younger than that (it would be running too: a
        # first cycle of 32 jobs sent over a second otherwise reads each two or three times early)
        self.seen_running: dict[str, float] = {}

    def _setting(self, target: str, name: str, default: float) -> float:
        return getattr(self.targets[target].settings, name, default)

    def add(self, target: str, job_id: str, item: tuple[DueDelivery, Upload | None, ItemFiles | None], *,
            now: float, submitted_at: float | None = None, polls: int = 0) -> Job:
        """Record that ``job_id`` holds ``item`` (the job is created on its first item)."""
        job = self.jobs[target].get(job_id)
        if job is None:
            restored = submitted_at is not None
            delay = self._delay(target, polls, restored)
            if not restored and target not in self.typical:
                delay = max(delay, min(self.seen_running.get(target, 0.0),
                                       self._setting(target, "job_poll_interval", DEFAULT_POLL_INTERVAL)))
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

    def learn_end(self, job: Job, now: float) -> None:
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
            if other.restored or other.finishing or other.ended is not None or other is job:
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

    def poll_tasks(self, target: str) -> int:
        """How many more poll tasks ``target`` may have out (one per worker)."""
        return max(0, int(self._setting(target, "workers", 1)) - self.polling.get(target, 0))

    def polls_out(self, target: str, jobs: list[Job], delta: int) -> None:
        """A poll task reading ``jobs`` went out (``delta`` 1) or came back (-1)."""
        count = self.polling.get(target, 0) + delta
        if count > 0:
            self.polling[target] = count
        else:
            self.polling.pop(target, None)
        for job in jobs:
            job.reading = delta > 0

    def due(self, target: str, now: float) -> tuple[list[str], list[Job]]:
        """``(jobs of target to read now, ended jobs whose end to read now)``; no reads of a
        job a poll task is reading, none while the target has all its poll tasks out."""
        interval = self._setting(target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        can_poll = self.poll_tasks(target) > 0
        polls, ends = [], []
        for job in self.jobs[target].values():
            if job.timer_start is None or job.timer_start > now:  # restored, or the clock was set back
                job.timer_start = now
            if job.next_poll_at - now > interval:  # set under a clock since set back
                job.next_poll_at = now
            if job.finishing or job.next_poll_at > now:
                continue
            if job.ended is not None:
                ends.append(job)
            elif can_poll and not job.reading:
                polls.append(job.job_id)
        return polls, ends

    def overdue(self, job: Job, now: float, *, read: bool) -> bool:
        """After a read of ``job`` that did not find it ended (``read``: it answered, still
        running; else it could not be read): give it up? (see the module docstring)"""
        timeout = self._setting(job.target, "job_timeout", DEFAULT_JOB_TIMEOUT)
        if job.timer_start is None or job.timer_start > now:
            job.timer_start = now
        if read:
            job.read_at = now
            return now - job.timer_start > timeout
        return now - max(job.timer_start, job.read_at or job.timer_start) > timeout

    def poll_later(self, job: Job, now: float, *, at_least: float = 0.0, running: bool = False) -> None:
        """The job is still running (or could not be read): read it again after a backoff."""
        if running:
            job.running_at = now
        job.polls += 1
        job.next_poll_at = now + max(self._delay(job.target, job.polls, job.restored), min(at_least, 3600.0))
        if running and not job.restored and job.target not in self.typical:
            self._postpone_younger(job, now)

    def _postpone_younger(self, job: Job, now: float) -> None:
        """``job`` was read still running at its age: until the target's jobs were seen ending,
        read no job of it before it is as old (never more than ``job_poll_interval`` from now)."""
        age = now - job.submitted_at
        if not 0 < age < 3600.0 or age <= self.seen_running.get(job.target, 0.0):
            return
        self.seen_running[job.target] = age
        interval = self._setting(job.target, "job_poll_interval", DEFAULT_POLL_INTERVAL)
        for other in self.jobs[job.target].values():
            if other.restored or other.finishing or other.ended is not None or other is job:
                continue
            if other.next_poll_at < other.submitted_at + age:
                other.next_poll_at = min(other.submitted_at + age, now + interval)

    def next_deadline(self, paused: dict[str, float]) -> float | None:
        """The earliest read of a job (or of its end) of a target that is not paused (None:
        none to make)."""
        times = []
        for target, jobs in self.jobs.items():
            if target in paused:
                continue
            can_poll = self.poll_tasks(target) > 0
            times += [job.next_poll_at for job in jobs.values()
                      if not job.finishing and (job.ended is not None or (can_poll and not job.reading))]
        return min(times) if times else None

    # -- a failed pass --------------------------------------------------------------------------
    def snapshot(self):
        """What a failed pass must put back: each job's fields a pass changes, as a tuple (a
        pass only appends to a job's items). Taken by every pass: kept cheap."""
        return ({t: {i: (j, j.timer_start, j.next_poll_at, j.polls, j.finishing, j.ended, j.read_at, j.reading,
                         len(j.items))
                     for i, j in jobs.items()} for t, jobs in self.jobs.items()}, dict(self.polling))

    def restore(self, saved) -> None:
        jobs, self.polling = saved
        self.jobs = {target: {} for target in jobs}
        for target, kept in jobs.items():
            for job_id, (job, timer_start, next_poll_at, polls, finishing, ended, read_at, reading,
                         count) in kept.items():
                job.timer_start, job.next_poll_at, job.polls = timer_start, next_poll_at, polls
                job.finishing, job.ended, job.read_at, job.reading = finishing, ended, read_at, reading
                del job.items[count:]
                self.jobs[target][job_id] = job
