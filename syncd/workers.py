"""A target's worker threads: they run the tasks the coordinator hands them, oldest first.

``concurrent.futures.ThreadPoolExecutor`` without the futures: each task reports its own
result (on the coordinator's inbox, syncd.inbox), so the Future, its condition variable and
its waiters are not paid for on every batch (on a burst of small items to a local target
they were about a tenth of the Python time). The threads are daemon threads: what a task is
still doing when the process exits is abandoned like a crash would abandon it (its intent
is journaled: the next start recovers it); ``Daemon.close`` first waits for them.
"""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger("syncd.workers")


class Workers:
    """``count`` threads named ``name-N`` running ``submit``ted tasks."""

    def __init__(self, count: int, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, task, *args) -> None:
        self._tasks.put((task, args))

    def _run(self) -> None:
        while True:
            work = self._tasks.get()
            if work is None:
                return
            task, args = work
            try:
                task(*args)
            except BaseException:  # a task reports its own errors; this is a bug
                log.exception("a worker task failed")

    def shutdown(self, wait: bool = False, cancel_futures: bool = False) -> None:
        """Stop the threads once they finish their current task (dropping the queued ones
        with ``cancel_futures``); with ``wait``, until they have."""
        if cancel_futures:
            try:
                while True:
                    self._tasks.get_nowait()
            except queue.Empty:
                pass
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
