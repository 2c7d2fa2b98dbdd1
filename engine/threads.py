"""One OpenMP team per process: the thread that steps the LM has the intra-op thread budget, every other thread
that runs torch ops runs them on one thread.

Why: torch's CPU build runs its intra-op threads on libgomp, where every thread that starts a parallel region with
more than one thread gets a team (a pool of helper threads) that lives as long as that thread does. While the
process's OpenMP threads fit the CPUs, a team's helpers spin between parallel regions and pick the next one up at
once; past that count, libgomp makes every team's helpers sleep, and each parallel region pays a wake-up. A decoder
step is ~1,500 small ops, so a second team anywhere in the process (a session's T5 pass on its own thread, a
loader that stayed alive, a codec on two threads) makes every step much slower (benchmarks/RESULTS.md, "one
OpenMP team per process"). Hence: the LM's thread takes the budget, other threads take one (`side_thread`), and
work that needs the budget outside the LM's thread (loading a model) runs in a thread that ends with it
(`in_own_thread`).

A team also stalls when one of its threads loses its core: every parallel region waits at its barrier for the
descheduled thread. So side work that runs while the LM steps (a codec push, a tempo lock) says so
(`side_work`, `CoreShare`), and the LM's thread takes one thread fewer per such worker while it runs
(`LMThreads`): both go on at the speed of the cores they have, instead of the LM crawling at the pace of the
scheduler's time slices.

The intra-op count is per thread with this backend (libgomp): `torch.set_num_threads` sets the calling thread's
count and the default that threads take on their first parallel op.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch

from engine.thread_tuner import ThreadTuner

T = TypeVar("T")


_budget_lock = threading.RLock()  # setting a thread's count moves the process default for a moment: one at a time


def process_default() -> int:
    """The intra-op count a thread starts with (what a new thread's first parallel op uses)."""
    with _budget_lock:
        return in_own_thread(torch.get_num_threads, name="thread-budget")


def set_thread_budget(threads: int) -> None:
    """Give the calling thread `threads` intra-op threads, leaving every other thread's count, and the default that
    new threads pick up, as they were."""
    if torch.get_num_threads() == threads:  # (this call also makes torch take its per-thread setting now)
        return
    with _budget_lock:
        default = process_default()
        torch.set_num_threads(threads)  # this thread's OpenMP and MKL counts, and (a side effect) the process default
        if threads != default:  # put the process default back from a throwaway thread: its own count dies with it
            in_own_thread(torch.set_num_threads, default, name="thread-budget")


@contextmanager
def side_thread() -> Iterator[None]:
    """Within: the calling thread does torch work beside the LM's (a session, a prompt's encoding) on one thread,
    so that it never leads an OpenMP team of its own. Its own count comes back afterwards."""
    before = torch.get_num_threads()
    set_thread_budget(1)
    try:
        yield
    finally:
        set_thread_budget(before)


def blas_on_one_thread() -> None:
    """numpy's and scipy's BLAS (each ships its own OpenBLAS) on one thread, process-wide, for the rest of the
    process: the rule above for torch's teams, applied to the BLAS that the bridge's side work runs (a jam chunk's
    tempo lock computes a mel spectrogram beside the LM's steps). Two BLAS threads wait for a core that the LM or
    another program holds, and the helper spins meanwhile; one is hardly slower on a quiet host
    (benchmarks/RESULTS.md). threadpoolctl lets only the live thread that last set OpenBLAS's count change it: call
    this from a thread that ends (the server's loader), so that it binds no other code."""
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS now, so that it is limited too)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def in_own_thread(fn: Callable[..., T], *args, name: str = "own-team", **kwargs) -> T:
    """`fn(*args, **kwargs)` on a thread that ends when it returns, so the OpenMP team its ops start ends too;
    its result, or its exception re-raised here."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


ROOM_WAIT_S = 0.25  # the most a side worker waits for the LM's next step to make room (a step is ~50 ms)
STEPPING_S = 0.5  # an LM that has not begun a step for this long is not stepping (a stream dropped mid-way)


class CoreShare:
    """Who uses the cores now: the side workers, and the room the LM's current step leaves them (one per process:
    `CORES`; tests make their own)."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.side = 0  # side workers running, or waiting for room
        self.room = 0  # side workers the LM's current step runs beside (it took a thread fewer for each)
        self.last_step = float("-inf")  # when an LM thread last began a step (-inf: it said it is idle)

    @contextmanager
    def side_work(self) -> Iterator[None]:
        """Mark a stretch of one-thread torch or numpy work beside the LM's steps (see the module docstring). While
        the LM is stepping, it starts when the LM's next step has made room for it: started mid-step, it would
        stall the rest of that step's team for as long as it runs."""
        with self.cv:
            self.side += 1
            if self.stepping:
                self.cv.wait_for(lambda: self.room >= self.side or not self.stepping, timeout=ROOM_WAIT_S)
        try:
            yield
        finally:
            with self.cv:
                self.side -= 1

    @property
    def stepping(self) -> bool:
        return time.monotonic() - self.last_step < STEPPING_S

    def lm_threads(self, budget: int) -> int:
        """Called by the LM's thread before each step: the intra-op threads that step should use, its budget less
        one per side worker running or waiting (those waiting start now)."""
        with self.cv:
            self.last_step, self.room = time.monotonic(), self.side
            self.cv.notify_all()
            return max(1, budget - self.side)

    def lm_idle(self) -> None:
        """Called by the LM's thread when it has no step to run: side workers need not wait for room."""
        with self.cv:
            self.last_step = float("-inf")
            self.cv.notify_all()


CORES = CoreShare()


def side_work():
    """`CORES.side_work()`: the process's side work (a codec push, a tempo lock)."""
    return CORES.side_work()


class LMThreads:
    """The LM's thread's side of sharing the cores: `step()` before each step takes a thread fewer per side worker
    running (and lets those waiting start); `idle()` when it stops stepping gives the thread its budget back.

    With a `tuner` (engine/thread_tuner.py), a step's count is the tuner's choice within the budget rather than the
    whole budget: the time from one `step()` to the next is the step's duration, reported to the tuner, except the
    first step at a new count (the team resizes) and a step followed by `idle()`."""

    def __init__(self, budget: int | None = None, share: CoreShare = CORES, tuner: ThreadTuner | None = None):
        self.budget = budget if budget is not None else process_default()
        self.share = share
        self.tuner = tuner
        self.now: int | None = None  # unknown until the first step sets it
        self._began = 0.0  # when the step now running began
        self._timed: int | None = None  # its count, when its duration goes to the tuner
        self._thread: int | None = None  # the thread that steps (a count can only be set from the thread it is for)

    @classmethod
    def for_device(cls, device: torch.device) -> "LMThreads":
        """The LM's threads for a model on `device`: on CPU a tuner picks the count within the budget (on a GPU the
        count hardly matters to a step)."""
        threads = cls()
        if device.type == "cpu":
            threads.tuner = ThreadTuner(threads.budget)
        return threads

    def step(self) -> None:
        want = self.budget
        if self.tuner is not None:
            began, self._began = self._began, self.tuner.clock()
            if self._timed is not None:
                self.tuner.stepped(self._began - began, self._timed)
            want = min(self.budget, self.tuner.threads())
        n = self.share.lm_threads(want)
        self._timed = n if n == self.now else None
        self._thread = threading.get_ident()
        self._use(n)

    def idle(self) -> None:
        """The LM stops stepping (its stream ended, failed or was dropped): side work need not wait for room, and
        the stepping thread gets its whole budget back (when called from another thread, its count is left to
        its next `step()`)."""
        self.share.lm_idle()
        if self.tuner is not None:
            self.tuner.pause()
            self._timed = None
        if self._thread in (None, threading.get_ident()):
            self._use(self.budget)

    def _use(self, n: int) -> None:
        if n != self.now:
            set_thread_budget(n)
            self.now = n
