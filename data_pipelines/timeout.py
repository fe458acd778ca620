"""Calls with a time bound on a helper thread, for C code that may hang (a video decoder on a damaged file).

A signal-based alarm cannot interrupt a hang inside C code: Python runs signal handlers only between
bytecodes, in the main thread. So calls run on a helper thread and the caller waits at most `timeout_s`
from the moment the call started; it wakes on time as long as the C code releases the GIL (ctypes calls,
as in decord, and PyAV's decoding do). A hung call cannot be killed: its thread is abandoned (a daemon,
so it never blocks the process's exit) and the calls queued behind it move to a new thread.

Calls are submitted and awaited separately, so a caller can queue the next call before working on the
previous result (decode the next video while augmenting this one). The helper thread is long-lived rather
than one per call: a fresh thread gets a fresh malloc arena, and decoding a 16-frame clip in one measured
9 ms slower (22 ms against 13 ms) than in a warm thread. Works alike in DataLoader worker processes and in
the main process; a helper inherited through fork does not exist in the child, so a new one starts there.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CallTimedOut", "Job", "TimeoutRunner"]

T = TypeVar("T")
_POLL_S = 0.05  # how often a waiter checks whether its (queued) call has started


class CallTimedOut(Exception):
    """The call did not finish within the bound; its thread is abandoned."""


class Job(Generic[T]):
    """One submitted call; `TimeoutRunner.result` waits for it."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.started: float | None = None  # time.monotonic() when the helper began the call
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self.started = time.monotonic()
        try:
            self.value = self.fn()
        except BaseException as err:  # handed to the waiting caller, re-raised there
            self.error = err
        finally:
            self.done.set()


def _serve(jobs: queue.SimpleQueue) -> None:
    while True:
        job = jobs.get()
        job.run()
        del job  # drop it before blocking again, so a finished job's result is not kept alive


class TimeoutRunner:
    """Runs submitted calls in order on a long-lived daemon thread; `result` waits at most `timeout_s`."""

    def __init__(self, name: str = "timed-call") -> None:
        self.name = name
        self.abandoned = 0  # threads left stuck in a call that timed out
        self._jobs: queue.SimpleQueue | None = None
        self._pid = -1

    def _queue(self) -> queue.SimpleQueue:
        if self._jobs is None or self._pid != os.getpid():
            self._jobs, self._pid = queue.SimpleQueue(), os.getpid()
            threading.Thread(target=_serve, args=(self._jobs,), name=self.name, daemon=True).start()
        return self._jobs

    def submit(self, fn: Callable[[], T]) -> Job[T]:
        job = Job(fn)
        self._queue().put(job)
        return job

    def _abandon(self) -> None:
        """The helper is stuck: move the calls queued behind it to a new thread."""
        stuck, self._jobs = self._jobs, None
        self.abandoned += 1
        fresh = self._queue()
        while stuck is not None:
            try:
                fresh.put(stuck.get_nowait())
            except queue.Empty:
                break

    def result(self, job: Job[T], timeout_s: float) -> T:
        """The call's value (or its exception); CallTimedOut when it ran longer than `timeout_s` (0: wait)."""
        if timeout_s <= 0:
            job.done.wait()
        queued_since = time.monotonic()
        while not job.done.is_set():
            now = time.monotonic()
            if job.started is None:
                if now - queued_since >= timeout_s:  # a call ahead of it (never awaited) is stuck
                    self._abandon()
                    queued_since = now
                job.done.wait(_POLL_S)
            elif now >= job.started + timeout_s:
                self._abandon()
                raise CallTimedOut(f"call did not finish within {timeout_s} s")
            else:
                job.done.wait(job.started + timeout_s - now)
        error, job.error = job.error, None  # break job -> error -> traceback -> Job.run frame -> job
        if error is not None:
            try:
                raise error
            finally:
                del error  # and error -> traceback -> this frame -> error
        return job.value  # type: ignore[return-value]

    def __call__(self, fn: Callable[[], T], timeout_s: float) -> T:
        return self.result(self.submit(fn), timeout_s)
