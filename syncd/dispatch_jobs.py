"""The dispatcher's side of remote jobs (syncd.jobs holds the book of them).

Each pass, per target: the jobs due for a read go to poll tasks, shared out over the ones
the target may still have out (``_jobs_step``); a job read as running is read again later
(or given up: ``JobBook.overdue``), a job read as done gets a finish task that reads its end
and settles each of its items (``_finish``, ``_finished``), a job given up makes its items
due again with their outcome unknown (``_give_up``). ``Dispatcher`` inherits these: they
share its bookkeeping (``tasks``, ``in_flight``, ``next_due``, the staged work) and its pass
transaction.
"""

from __future__ import annotations

import logging
from functools import partial

from syncd import delivery
from syncd.delivery import FinishReport, PollReport
from syncd.errors import FatalTargetError, SyncdError, TransientError
from syncd.jobs import Job
from syncd.targets.base import JobState

log = logging.getLogger("syncd.dispatch")


class JobsSide:
    """Mixed into ``syncd.dispatch.Dispatcher`` (see the module docstring)."""

    def _jobs_step(self, name: str, now: float) -> None:
        ids, ended = self.jobs.due(name, now)
        for job in ended:  # their end could not be read last time
            self._finish(job)
        tasks = min(len(ids), self.jobs.poll_tasks(name))
        for share in (ids[i::tasks] for i in range(tasks)):
            self.jobs.polls_out(name, [self.jobs.jobs[name][job_id] for job_id in share], 1)
            self._staged.append(partial(self._submit, name, delivery.poll_task, self.inbox.put, self.targets[name],
                                        share))

    def _polled(self, report: PollReport, now: float) -> None:
        assert self.store is not None
        name = report.target
        self.jobs.polls_out(name, [job for job_id in report.asked if (job := self.jobs.get(name, job_id)) is not None],
                            -1)
        gate = self.health.gates[name]
        for job_id, state in report.states:
            job = self.jobs.get(name, job_id)
            if job is None or job.finishing:
                continue
            if isinstance(state, JobState):
                gate.served(now)
                if state.status == "running":
                    if self.jobs.overdue(job, now, read=True):
                        self._give_up(job, now, f"job {job_id} of {name} is still running after "
                                                f"{now - job.timer_start:.0f}s: its items are sent again")
                        continue
                    self.jobs.poll_later(job, now, running=True)
                    self.store.job_polled(name, job_id, job.next_poll_at, job.polls)
                elif state.status == "done":
                    job.ended = state  # never given up now; its end is read until it can be
                    self.jobs.learn_end(job, now)
                    if not self.stopping():  # shutting down: the next start polls it again and finishes it
                        self._finish(job)
                else:
                    self._give_up(job, now, f"job {job_id} of {name} was lost: its items are sent again")
            elif isinstance(state, FatalTargetError):
                if name not in self.health.paused:
                    self.health.pause(name, str(state), now)
            elif self.jobs.overdue(job, now, read=False):
                self._give_up(job, now, f"job {job_id} of {name} could not be read for "
                                        f"{now - max(job.timer_start, job.read_at or 0):.0f}s ({state}): "
                                        "its items are sent again")
            else:
                retry_after = state.retry_after if isinstance(state, TransientError) else None
                if isinstance(state, TransientError) and state.throttled:
                    gate.throttled(now, retry_after)
                log.warning("cannot read job %s of %s now: %s", job_id, name, state)
                self.jobs.poll_later(job, now, at_least=retry_after or 0.0)

    def _finish(self, job: Job) -> None:
        """Stage the task reading the end of ``job`` (read as ended)."""
        job.finishing = True
        self.tasks[job.target] += 1
        self._staged.append(partial(self._submit, job.target, delivery.finish_task, self.inbox.put,
                                    self.targets[job.target], job.job_id, job.ended, list(job.items),
                                    self.read_options))

    def _finished(self, report: FinishReport, now: float) -> None:
        assert self.store is not None
        name = report.target
        self.tasks[name] -= 1
        self.next_due.pop(name, None)
        job = self.jobs.get(name, report.job_id)
        if job is None:
            return
        if isinstance(report.result, SyncdError):
            job.finishing = False
            error = report.result
            if isinstance(error, FatalTargetError) and name not in self.health.paused:
                self.health.pause(name, str(error), now)
            retry_after = error.retry_after if isinstance(error, TransientError) else None
            if isinstance(error, TransientError) and error.throttled:
                self.health.gates[name].throttled(now, retry_after)
            log.warning("cannot read the end of job %s of %s now: %s", report.job_id, name, error)
            self.jobs.poll_later(job, now, at_least=retry_after or 0.0)
            return
        for outcome in report.result:
            self._record(outcome, now)
        self.store.job_ended(name, report.job_id)
        self.jobs.remove(name, report.job_id)

    def _give_up(self, job: Job, now: float, message: str) -> None:
        """Stop waiting for ``job``: its items are due again, their outcome unknown."""
        assert self.store is not None
        log.warning("%s", message)
        for due, _, _ in job.items:
            self.in_flight.pop((due.item_id, job.target), None)
            self.store.retry_later(due.item_id, job.target, message, now, True, now, count=False)
        self.store.job_ended(job.target, job.job_id)
        self.jobs.remove(job.target, job.job_id)
        self.next_due.pop(job.target, None)
