"""One OpenMP team per process (engine/threads.py): who may lead a team, and how the LM lends cores to side work.

A thread that runs a parallel op with more than one intra-op thread gets libgomp helper threads that live as long
as it does; they show up as OS threads of this process (/proc/self/task), which is what these tests count. The
speed that a second team costs the LM's steps is measured in benchmarks/omp_teams.py, not here.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from engine.sampling import SamplingSettings
from engine.threads import (ROOM_WAIT_S, STEPPING_S, CoreShare, LMThreads, in_own_thread, process_default,
                            set_thread_budget, side_thread)

needs_two = pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs an intra-op budget of 2 or more")


def os_threads() -> set[str]:
    """The process's OS thread ids."""
    return set(os.listdir("/proc/self/task"))


def new_threads(before: set[str]) -> set[str]:
    """Threads alive now, and still a moment later, that were not in `before` (threads that other tests left may
    end meanwhile, and short-lived ones, like set_thread_budget's, are gone by then)."""
    time.sleep(0.2)
    return os_threads() - before


def parallel_op() -> None:
    """An op big enough to run on every intra-op thread of the calling thread."""
    a = torch.randn(512, 512)
    for _ in range(3):
        a = torch.tanh(a @ a)


class Parked:
    """A thread that stays alive and runs what it is given, with 2 intra-op threads (what a server's threads get by
    default), whatever earlier tests left as the process default."""

    def __init__(self) -> None:
        self.jobs: list = []
        self.cv = threading.Condition()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        set_thread_budget(2)
        while True:
            with self.cv:
                while not self.jobs:
                    self.cv.wait()
                fn = self.jobs.pop(0)
            if fn is None:
                return
            fn()
            with self.cv:
                self.done += 1
                self.cv.notify_all()

    def run(self, fn) -> None:
        with self.cv:
            target = self.done + 1
            self.jobs.append(fn)
            self.cv.notify_all()
            assert self.cv.wait_for(lambda: self.done >= target, timeout=120)

    def close(self) -> None:
        with self.cv:
            self.jobs.append(None)
            self.cv.notify_all()
        self.thread.join(10)


@needs_two
def test_a_thread_that_runs_parallel_ops_keeps_a_team_and_a_side_thread_does_not():
    """The negative control for the counts below: a live thread's parallel op leaves helper threads behind."""
    parked = Parked()
    try:
        parked.run(lambda: None)
        base = os_threads()
        def one_thread_op():
            before = torch.get_num_threads()
            set_thread_budget(1)
            parallel_op()
            set_thread_budget(before)

        parked.run(one_thread_op)
        assert not new_threads(base)  # one thread: no team
        parked.run(parallel_op)
        assert new_threads(base)  # the budget: a team that outlives the op
    finally:
        parked.close()


@needs_two
def test_in_own_thread_ends_its_team_with_it():
    before = os_threads()
    assert in_own_thread(lambda: (parallel_op(), 7)[1]) == 7
    assert not new_threads(before)
    with pytest.raises(ValueError, match="bad"):
        in_own_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))


@needs_two
@pytest.mark.parametrize("one_thread", [True, False], ids=["side-thread", "negative-control"])
def test_a_batch_engine_consumer_leads_no_team(mono_model, one_thread, monkeypatch):
    """A stream on the batching engine: its T5 pass and session run in the consumer's thread on one thread (no
    helpers appear for that thread), the steps on the engine's thread; the consumer's own count comes back.
    Negative control: without `side_thread` the same consumer leaves a team behind."""
    import contextlib

    from engine import batch_engine
    from engine.batch_engine import BatchEngine
    from engine.interface import StreamSpec

    if not one_thread:
        monkeypatch.setattr(batch_engine, "side_thread", contextlib.nullcontext)

    engine = BatchEngine(mono_model, max_rows=2)
    parked = Parked()
    counts = {}
    try:
        engine.warm_up()
        parked.run(lambda: counts.setdefault("before", torch.get_num_threads()))
        base = os_threads()
        tag = f"({one_thread})"  # prompts of their own: T5 states are cached per prompt
        parked.run(lambda: list(engine.open(StreamSpec("a team of one" + tag, SamplingSettings(seed=1), seconds=0.5))))
        parked.run(lambda: engine.token_stream("another" + tag, SamplingSettings(seed=2), frames=10).run())
        if not one_thread:
            assert new_threads(base)
            return
        assert not new_threads(base)
        parked.run(lambda: counts.setdefault("after", torch.get_num_threads()))
        assert counts["after"] == counts["before"] == 2
    finally:
        parked.close()
        engine.close()


@needs_two
@pytest.mark.parametrize("own_thread", [True, False], ids=["own-thread", "negative-control"])
def test_the_servers_warm_up_leaves_no_team_beside_the_engines(own_thread, monkeypatch):
    """The server's loader warms the model up (2 intra-op threads) and then waits while the batch engine traces
    and settles its thread count: a team the warm-up left on the loader would sleep beside the engine's and made
    the settling's 2-thread steps ~1.7x slower, so a quiet host settled on 1 thread (benchmarks/RESULTS.md).
    Negative control: the warm-up run on the loader's own thread leaves a team behind."""
    from bridge import server
    from engine import generate

    monkeypatch.setattr(generate, "warm_up", lambda model: (parallel_op(), 0.0)[1])  # whatever the warm-up runs
    if not own_thread:
        monkeypatch.setattr(server, "in_own_thread", lambda fn, *args, name="": fn(*args))
    loader = Parked()
    try:
        loader.run(lambda: None)
        base = os_threads()
        loader.run(lambda: server._warm_up(model=None))
        assert bool(new_threads(base)) is not own_thread
    finally:
        loader.close()


def test_set_thread_budget_from_many_threads_keeps_the_default():
    default = process_default()
    start = threading.Barrier(8)

    def churn():
        start.wait()
        for n in (1, 3, 1):
            set_thread_budget(n)
            assert torch.get_num_threads() == n

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert process_default() == default and torch.get_num_threads() == default


def test_side_thread_gives_the_count_back():
    before = torch.get_num_threads()
    with side_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_side_work_waits_for_the_lm_to_make_room():
    """While the LM steps, side work starts at the LM's next step, which runs a thread fewer; idle, no wait."""
    cores = CoreShare()  # its own: engines of other tests may still be stepping on the process's
    cores.lm_threads(2)  # the LM is stepping
    started = threading.Event()

    def side():
        with cores.side_work():
            started.set()
            time.sleep(0.2)

    t = threading.Thread(target=side)
    t.start()
    try:
        assert not started.wait(0.05)  # mid-step: it waits for room
        assert cores.lm_threads(2) == 1  # the next step lends it a core ...
        assert started.wait(1)  # ... and it starts
        assert cores.lm_threads(3) == 2
    finally:
        t.join()
    assert cores.lm_threads(2) == 2  # it is done: the whole budget again
    cores.lm_idle()
    t0 = time.monotonic()
    with cores.side_work():  # the LM is idle: no wait
        pass
    assert time.monotonic() - t0 < ROOM_WAIT_S


def test_side_work_waits_no_longer_than_its_bound_for_a_stuck_lm():
    cores = CoreShare()
    cores.lm_threads(2)
    t0 = time.monotonic()
    with cores.side_work():
        waited = time.monotonic() - t0
    assert ROOM_WAIT_S * 0.8 <= waited < ROOM_WAIT_S + 1.0
    # An LM whose stream was dropped mid-way (no step for STEPPING_S, no idle call) holds nobody up.
    cores.last_step = time.monotonic() - STEPPING_S
    t0 = time.monotonic()
    with cores.side_work():
        assert time.monotonic() - t0 < ROOM_WAIT_S / 2


@needs_two
def test_lm_threads_lends_a_thread_and_takes_it_back():
    share = CoreShare()
    seen, inside, release = [], threading.Event(), threading.Event()

    def side():
        with share.side_work():
            inside.set()
            release.wait(5)

    def lm():
        cores = LMThreads(2, share)
        cores.step()
        seen.append(torch.get_num_threads())
        s = threading.Thread(target=side)
        s.start()
        while share.side == 0:
            time.sleep(0.001)
        cores.step()  # lends a core: the side worker starts
        seen.append(torch.get_num_threads())
        seen.append(inside.wait(1))
        release.set()
        s.join()
        cores.step()
        seen.append(torch.get_num_threads())
        cores.idle()

    t = threading.Thread(target=lm)
    t.start()
    t.join()
    assert seen == [2, 1, True, 2]


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _set_blas(threads: int) -> None:
    """Every OpenBLAS at `threads`, from a thread that ends: threadpoolctl lets only the live thread that last set
    OpenBLAS's count change it, so setting it from this (long-lived) thread would lock the code under test out."""
    from threadpoolctl import threadpool_limits

    in_own_thread(threadpool_limits, limits=threads, user_api="blas")


def test_numpy_and_scipy_blas_run_on_one_thread():
    import scipy.linalg  # noqa: F401

    from engine.threads import blas_on_one_thread

    before = _blas_threads()
    assert len(before) >= 2  # numpy's OpenBLAS and scipy's
    try:
        _set_blas(2)
        assert set(_blas_threads()) == {min(2, os.cpu_count() or 1)}
        in_own_thread(blas_on_one_thread)
        assert _blas_threads() == [1] * len(before)
    finally:
        _set_blas(max(before))


def test_the_bridge_limits_blas_before_its_side_work(tmp_path):
    # The server's loader thread limits BLAS first thing, whatever becomes of the model (here: none to load).
    from bridge.server import BridgeServer, ServeConfig
    from tests.test_server_harness import free_udp_port

    before = _blas_threads()
    _set_blas(2)
    server = BridgeServer(ServeConfig(model=str(tmp_path / "no-model"), device="cpu", port=free_udp_port(),
                                      reply_port=free_udp_port(), out_dir=str(tmp_path)))
    try:
        server.start()
        deadline = time.monotonic() + 60
        while server.state not in ("error", "ready") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.state == "error" and set(_blas_threads()) == {1}
    finally:
        server.stop()
        _set_blas(max(before))


def _native_op(kernel: str):
    """A call of `kernel` (one of engine.native.KERNELS that splits its work over threads), big enough to split."""
    from engine.lm import attend, pack_int8_rows
    from engine.quantize import NativeInt4Linear, NativeW8A8Linear, NativeW8A16Linear

    g = torch.Generator().manual_seed(4)
    if kernel == "lstm_addmm":
        w = torch.randn(2048, 512, generator=g).half()
        return lambda: torch.ops.musicgen_bridge.lstm_addmm(torch.zeros(1, 2048), torch.randn(1, 512), w)
    if kernel == "decode_attention_int8":
        q, k = torch.randn(2, 16, 1, 64, generator=g), pack_int8_rows(torch.randn(2, 16, 400, 64, generator=g))
        return lambda: attend(q, k, k, None)
    w = torch.randn(2048, 1024, generator=g)
    lin = {"int4_linear": lambda: NativeInt4Linear(w, 32), "w8a16_linear": lambda: NativeW8A16Linear(w),
           "w8a8_linear": lambda: NativeW8A8Linear(w)}[kernel]()
    return lambda: lin(torch.randn(2, 1024))


@needs_two
@pytest.mark.parametrize("op", ["lstm_addmm", "decode_attention_int8", "int4_linear", "w8a16_linear", "w8a8_linear"])
def test_a_native_kernel_keeps_the_count_its_thread_was_given(op):
    """A thread given one intra-op thread (the codec worker, a side thread) still has one after its first native
    op. at::parallel_for's lazy per-thread init, compiled into the native library with its own once-per-thread
    flag, used to set the thread's count to the process default there: the codec worker decoded on two threads
    after its first push, a second OpenMP team beside the LM's (engine/native/parallel.h)."""
    from engine import native

    if not native.supports(op):
        pytest.skip(f"the native {op} does not run here ({native.why_not() or 'the CPU lacks its instructions'})")
    run = _native_op(op)
    counts = {}

    def on_one_thread() -> None:
        set_thread_budget(1)
        counts["before"] = torch.get_num_threads()
        run()
        counts["after"] = torch.get_num_threads()

    t = threading.Thread(target=on_one_thread)
    t.start()
    t.join()
    assert counts == {"before": 1, "after": 1}


@needs_two
def test_idle_called_from_another_thread_leaves_that_threads_count():
    """A stream released from a thread other than the one that stepped it (a generator closed elsewhere) tells
    the share that the LM is idle, and sets no count on the releasing thread, which has its own budget."""
    share = CoreShare()
    threads = LMThreads(budget=2, share=share)
    share.side = 1  # a side worker runs: the step takes a thread fewer, and idle() gives it back
    stepped, released = threading.Event(), threading.Event()

    def step_and_stay() -> None:  # alive meanwhile: a thread's id may be reused once it has ended
        threads.step()
        stepped.set()
        released.wait(10)

    lm_thread = threading.Thread(target=step_and_stay)
    lm_thread.start()
    stepped.wait(10)
    share.side = 0
    assert threads.now == 1
    counts = {}

    def release_here() -> None:
        set_thread_budget(1)
        threads.idle()
        counts["after"] = torch.get_num_threads()

    in_own_thread(release_here)
    released.set()
    lm_thread.join()
    assert counts == {"after": 1} and not share.stepping
