"""The batching engine: every active stream advances in one decoder step over one batched KV cache.

A CPU decoder step is bound by reading the weights, a GPU step by launching kernels, so a step over 8 rows costs
little more than over 2. One scheduler thread owns the model: each round it runs the prefills that are due (a
request that joined, an endless stream whose window slid) on their own rows, as they would run alone, then one
decoder call for all rows, each at its own position and length (`MusicGenLM.forward` with per-row positions),
and hands every request its rows' logits to sample with its own generator. Requests join and leave between
rounds; rows stay packed (`engine.batch_cache`).

Results do not depend on the neighbours: the prepacked linears and the one-query attention compute each row the
same whatever the other rows hold or how many there are (tests/test_batch_engine.py checks codes).

Capacity: rows are capped by memory (a full-window row's KV bytes against a share of the free memory, at most
`MAX_ROWS`); `capacity` counts requests with guidance (2 rows each). Past it, requests wait inside their stream;
endless ones (jams, whose next chunk has a deadline) are admitted before finite renders.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from engine.batch_cache import BatchCache, kv_bytes_per_row
from engine.batch_graph import batch_decode_step
from engine.batched_stream import BatchedStream
from engine.codec_worker import CodecWorker
from engine.generate import open_stream
from engine.interface import StreamSpec
from engine.local_engine import SessionStream, engine_info
from engine.model import MusicGen
from engine.sampling import SamplingSettings
from engine.session import Chunk
from engine.steps import decode_step, resolve_step_mode
from engine.threads import LMThreads, side_thread
from engine.token_stream import ColumnInput, prefill_logits

log = logging.getLogger(__name__)

MAX_ROWS = 16  # 8 guided requests: past this a CPU step stops being bound by the weights
MEMORY_SHARE = 0.5  # of the memory free at start, for the batch's KV cache at full windows
SETTLE_STEPS = 120  # the most warm-up steps the thread tuner gets to settle (its comparisons need ~50-70)


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (Linux: MemAvailable; CUDA: the driver's free memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def full_window_len(model: MusicGen) -> int:
    """The longest cache a request can need: a full window, and a melody model's prefix with its text."""
    return model.prefix_frames + (64 if model.melody is not None else 0) + model.pattern.columns(model.max_frames)


def rows_from_memory(model: MusicGen) -> int:
    """How many full-window rows a share of the free memory holds, at most MAX_ROWS (at least 2: one request)."""
    row = kv_bytes_per_row(model.lm, full_window_len(model))
    return max(2, min(MAX_ROWS, int(MEMORY_SHARE * available_memory(model.lm.device) // row)))


@dataclass
class BatchStats:
    rounds: int = 0  # batched decoder calls
    rows: int = 0  # rows summed over those calls
    step_seconds: float = 0.0
    prefills: int = 0
    prefill_seconds: float = 0.0  # time the running rows waited for joining or sliding requests' prefills
    prefills_shared: int = 0  # prefills copied from an identical one (takes), included in `prefills`


class BatchEngine:
    """`engine.interface.Engine` that advances all its streams together (see the module docstring)."""

    def __init__(self, model: MusicGen, *, max_rows: int | None = None, step_mode: str = "auto"):
        self.model, self.info = model, engine_info(model)
        # The LM's budget, on the engine's thread, its count tuned on CPU (engine/threads.py)
        self.threads = LMThreads.for_device(model.lm.device)
        lm = model.lm
        self.full_len = full_window_len(model)
        self.row_bytes = kv_bytes_per_row(lm, self.full_len)
        self.max_rows = max(2, max_rows if max_rows is not None else rows_from_memory(model))
        self.capacity = self.max_rows // 2
        self.step_mode = resolve_step_mode(step_mode, lm.device)
        self.decode = batch_decode_step(lm, self.step_mode)  # CUDA: a graph per row bucket (engine/batch_graph.py)
        self.cache = BatchCache(lm)
        self.stats = BatchStats()
        self.codec = CodecWorker()  # every stream's codec pushes, batched where streams are cut alike
        self.active: list[BatchedStream] = []  # admitted, in row order (packed from row 0)
        self.waiting: list[tuple[int, int, BatchedStream]] = []  # (priority, arrival, stream)
        self._arrivals = itertools.count()
        self._calls: list[tuple[Callable[[], object], Future]] = []  # work for the engine's thread (warm_up)
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
        self._thread.start()
        log.info("batch engine: up to %d rows (%d guided streams), %.1f MB of KV cache per full-window row, %s steps",
                 self.max_rows, self.capacity, self.row_bytes / 1e6, self.step_mode)

    def warm_up(self) -> float:
        """Trace the batched step for every row bucket (2, 4, ... max_rows) before serving, so a stream that joins
        does not stall the others while a trace is made. Runs on the engine's thread (its OpenMP team is the one
        the steps use). Returns the seconds it took."""
        return self._on_engine_thread(self._warm_up)

    @torch.inference_mode()
    def _warm_up(self) -> float:
        t0 = time.perf_counter()
        lm, K = self.model.lm, self.model.pattern.n_codebooks
        if self.active or self.waiting:
            return 0.0
        self.cache.ensure(self.max_rows, 8, 1, 0)
        buckets = sorted({min(self.max_rows, 1 << (n - 1).bit_length()) for n in range(2, self.max_rows + 1)})
        # CUDA graphs are captured on the buffers a round binds, which this tiny cache is not: warm up eagerly.
        decode = decode_step(lm, "eager") if self.step_mode == "graph" else self.decode
        # Each bucket's step as requests that fold their cross-attention take it (the usual: a prompt of tens of
        # tokens, `MusicGenLM.folds_cross`), then as requests that do not, and (where the LM folds) both at once.
        folds = [True, False, None] if self.cache.cross_p else [False]
        for B in buckets:
            tokens = torch.full((B, K, 1), lm.cfg.special_token, device=lm.device)
            for fold in folds:
                if lm.cfg.cross_attention:
                    self._warm_condition(B, fold)
                with self.cache.bind(0, B):
                    decode(tokens, torch.zeros(B, 1, dtype=torch.long, device=lm.device), 1)
        self._settle_threads(decode, K)
        self.cache.release()
        return time.perf_counter() - t0

    def _settle_threads(self, decode, K: int) -> None:
        """Step one guided request's rows until the thread tuner has compared its counts, so the first request
        starts at the count this host gives (a jam's first chunk sets how far ahead its first bar goes)."""
        tuner = self.threads.tuner
        if tuner is not None:
            tuner.settle()
        tokens = torch.full((2, K, 1), self.model.lm.cfg.special_token, device=self.model.lm.device)
        for _ in range(SETTLE_STEPS):
            if tuner is None or tuner.settled:
                break
            self.threads.step()
            with self.cache.bind(0, 2):
                decode(tokens, torch.zeros(2, 1, dtype=torch.long, device=self.model.lm.device), 1)
        self.threads.idle()

    def _on_engine_thread(self, fn: Callable[[], object]):
        """`fn()` run by the scheduler between rounds; its result (or exception) here."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._calls.append((fn, fut))
            self._cv.notify_all()
        return fut.result()

    # --- Engine ---

    def open(self, spec: StreamSpec) -> "BatchEngineStream":
        return BatchEngineStream(self, spec)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=10)
        self.codec.close()

    def token_stream(self, prompt: str, settings: SamplingSettings, **kwargs) -> BatchedStream:
        """A token stream in this engine's batch (`engine.generate.open_stream`'s arguments). The prompt's T5 pass
        runs on one thread of the caller's (`engine.threads.side_thread`)."""
        with side_thread():
            return open_stream(self.model, prompt, settings, make=functools.partial(BatchedStream, self), **kwargs)

    @property
    def rows_used(self) -> int:
        return sum(s.rows for s in self.active)

    # --- called by BatchedStream ---

    def submit(self, stream: BatchedStream) -> None:
        if stream.rows > self.max_rows:
            raise ValueError(f"a request of {stream.rows} rows cannot fit in {self.max_rows}")
        with self._cv:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self.waiting.append((0 if stream.endless else 1, next(self._arrivals), stream))
            self._cv.notify_all()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    # --- the scheduler ---

    def _loop(self) -> None:
        self.threads.idle()  # the budget, on this thread: warm-up and steps run here
        while True:
            started = time.perf_counter()  # a round's time counts from here: the scheduling around it is its cost too
            with self._cv:
                if self._closed:
                    self._shut_down()
                    return
                calls, self._calls = self._calls, []
                if not calls:
                    self._drop_finished()
                    self._admit()
                    ready = [s for s in self.active if s.wants_step()]
                    if not ready:
                        if not self.active and not self.waiting:
                            self.cache.release()
                        self.threads.idle()
                        self._cv.wait(0.5)
                        continue
            if calls:
                for fn, fut in calls:
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - the caller gets it
                        fut.set_exception(e)
                continue
            try:
                self._round(ready, started)
            except Exception as e:  # noqa: BLE001 - the requests in this round fail, the engine goes on
                log.exception("batched step failed")
                for s in ready:
                    s.fail(e)
                    s.released = True

    def _warm_condition(self, rows: int, fold: bool | None) -> None:
        """Guided one-key prompts on the warm-up's `rows`: all folded (True), none (False), or alternating (None)."""
        lm = self.model.lm
        cond = torch.zeros(2, 1, lm.cfg.dim, device=lm.device)
        cond[0] = 1.0  # a prompt, then guidance's null condition
        for row in range(0, rows, 2):
            self.cache.set_condition(row, cond, fold=bool(fold or (fold is None and row % 4 == 0)))

    def _shut_down(self) -> None:
        for s in self.active + [w[2] for w in self.waiting]:
            s.fail(RuntimeError("the engine was closed"))
        for _, fut in self._calls:
            fut.set_exception(RuntimeError("the batch engine is closed"))
        self.active, self.waiting, self._calls = [], [], []
        self.cache.release()

    def _drop_finished(self) -> None:
        gone = lambda s: s.released or s.cancel.is_set() or s.cursor.done or s._error is not None  # noqa: E731
        self.waiting = [w for w in self.waiting if not gone(w[2])]
        if not any(gone(s) for s in self.active):
            return
        row, kept = 0, []
        for s in self.active:
            if gone(s):
                s.slot = None
                continue
            if s.slot != row:  # pack: the hole left by a request that went is filled from behind
                self.cache.move(s.slot, row, s.rows, s.kv_used)
                s.slot = row
            kept.append(s)
            row += s.rows
        self.active = kept

    def _admit(self) -> None:
        self.waiting.sort(key=lambda w: w[:2])
        while self.waiting:
            s = self.waiting[0][2]
            used = self.rows_used
            if used + s.rows > self.max_rows:
                return  # strict order: a later request does not overtake one that waits for room
            self.waiting.pop(0)
            rows = min(self.max_rows, 1 << (used + s.rows - 1).bit_length())  # grow in powers of two
            length = max([s.cache_len] + [a.cache_len for a in self.active])
            self.cache.ensure(rows, length, s.cross_len, used)
            s.slot, s.kv_used = used, 0
            if s.cond.cross is not None:
                self.cache.set_condition(used, s.cond.cross)
            self.active.append(s)

    def _twin(self, s: BatchedStream, inp: ColumnInput) -> BatchedStream | None:
        """An admitted stream whose current window began with the prefill `s` is about to run, on the same
        conditioning, so that its rows hold what that prefill would write; None if there is none."""
        for t in self.active:
            if t is s or t.prefilled is None or t.slot is None or t.rows != s.rows or t.cross_len != s.cross_len:
                continue
            t_inp, _, seq = t.prefilled
            if seq is not t.cursor.seq:  # its window has slid since
                continue
            if t_inp.start != inp.start or t_inp.tokens.shape != inp.tokens.shape or not torch.equal(t_inp.tokens, inp.tokens):
                continue
            if (t_inp.prefix is None) != (inp.prefix is None) or (inp.prefix is not None and not torch.equal(t_inp.prefix, inp.prefix)):
                continue
            if (t.cond.cross is None) != (s.cond.cross is None) or (s.cond.cross is not None and not torch.equal(t.cond.cross, s.cond.cross)):
                continue
            return t
        return None

    @torch.inference_mode()
    def _round(self, ready: list[BatchedStream], started: float) -> None:
        lm = self.model.lm
        self.threads.step()  # a thread fewer while a codec push or a tempo lock runs beside (engine/threads.py)
        for s in ready:  # prefills first, each on its own rows as it would run alone
            if s.cursor.prefill_due:
                t0 = time.perf_counter()
                inp = s.cursor.next_input()
                twin = self._twin(s, inp)
                if twin is not None:
                    # Takes: the same prompt and length prefill the same rows alike; copy the keys and values
                    # the twin's prefill wrote (positions it has not overwritten since) and its logits.
                    self.cache.move(twin.slot, s.slot, s.rows, inp.kv_len)
                    logits = twin.prefilled[1]
                    self.stats.prefills_shared += 1
                else:
                    with self.cache.bind(s.slot, s.slot + s.rows, cross_len=s.cross_len):
                        logits = prefill_logits(lm, inp, s.rows)
                s.prefilled = (inp, logits, s.cursor.seq)
                s.kv_used = inp.kv_len
                s.take(inp, logits)
                self.stats.prefills += 1
                self.stats.prefill_seconds += time.perf_counter() - t0
                s.busy_seconds += time.perf_counter() - started
                started = time.perf_counter()
        stepping = {id(s) for s in ready if s.wants_step() and not s.cursor.prefill_due}
        if not stepping:
            return
        t0 = time.perf_counter()
        inputs: list[tuple[BatchedStream, ColumnInput]] = []
        tokens, positions = [], []
        for s in self.active:
            if id(s) in stepping:
                inp = s.cursor.next_input()
                inputs.append((s, inp))
            else:
                # Not advancing this round (paced, or about to leave or slide): feed its next column anyway, which
                # writes the keys and values its real step will write again; a row due a prefill gets anything.
                inp = s.cursor.pending_step()
            if inp is None:
                tok, pos = torch.full((self.model.pattern.n_codebooks, 1), lm.cfg.special_token), 0
            else:
                tok, pos = inp.tokens, inp.start
            tokens.append(tok[None].expand(s.rows, -1, -1))
            positions += [pos] * s.rows
        # Rows padded to a power of two (free rows of the cache, fed anything): a traced step per bucket, not per
        # batch size.
        B = min(self.cache.rows, 1 << (len(positions) - 1).bit_length())
        pad = B - len(positions)
        if pad:
            tokens.append(torch.full((pad, self.model.pattern.n_codebooks, 1), lm.cfg.special_token))
            positions += [0] * pad
        input_pos = torch.tensor(positions, device=lm.device)[:, None]
        kv_len = max(positions) + 1
        with self.cache.bind(0, B):
            logits = self.decode(torch.cat(tokens).to(lm.device), input_pos, kv_len)[:, :, -1]
        for s, inp in inputs:
            s.kv_used = inp.kv_len
            s.take(inp, logits[s.slot : s.slot + s.rows])
        took = time.perf_counter() - started
        for s, _ in inputs:
            s.busy_seconds += took
        self.stats.rounds += 1
        self.stats.rows += B
        self.stats.step_seconds += time.perf_counter() - t0


class BatchEngineStream(SessionStream):
    """One `StreamSpec` on a `BatchEngine`: a `StreamSession` on the caller's thread (chunks, codec) whose tokens
    come from the engine's batch."""

    def __init__(self, engine: BatchEngine, spec: StreamSpec):
        super().__init__(engine.model, spec)
        self.engine = engine

    def __iter__(self) -> Iterator[Chunk]:
        with side_thread():  # the session's torch work (prompt encoding) on one thread (engine/threads.py)
            session = self._open_session(
                open_tokens=functools.partial(open_stream, make=functools.partial(BatchedStream, self.engine)),
                codec=self.engine.codec)
            try:
                yield from session
            finally:
                session.stream.release()
