"""One request inside a batching engine: its cursor and sampler on the scheduler's side, a token stream on the
consumer's.

The scheduler (`engine.batch_engine`) owns the decoding: it asks the cursor what to feed, runs one decoder call
for every request, and gives each its rows' logits to `take()`. The consumer (a `StreamSession` on the caller's
thread) calls `step()` like on a `TokenStream` and gets the frames settled since its last call, waiting when there
are none yet. Same arguments as `TokenStream`, so `engine.generate.open_stream(make=...)` builds either.
"""

from __future__ import annotations

import threading
from typing import Callable

from torch import Tensor

from engine.errors import Cancelled
from engine.lm import MusicGenLM
from engine.pattern import DelayPattern
from engine.sampling import SamplingSettings, guide, make_generator, resolve_seed, sample
from engine.token_stream import ColumnInput, Conditioning, StreamCursor

# An endless stream (a jam) runs at most this far ahead of its consumer, which paces itself to real time; a
# finite one runs to its end as fast as the batch goes.
LOOKAHEAD_FRAMES = 100


class BatchedStream:
    def __init__(
        self,
        scheduler,
        lm: MusicGenLM,
        pattern: DelayPattern,
        settings: SamplingSettings,
        cond: Conditioning,
        *,
        prompt: Tensor | None = None,
        total_frames: int | None = None,
        window_frames: int,
        keep_frames: int,
        align: Callable[[int], int] | None = None,
        cancel: threading.Event | None = None,
        max_prefix: int = 0,
        step_mode: str = "auto",
    ):
        self.settings, self.cond = settings, cond
        self.cancel = cancel or threading.Event()
        self.seed = resolve_seed(settings.seed)
        self.generator = make_generator(self.seed, lm.device)
        self.cursor = StreamCursor(pattern, lm.cfg.special_token, prompt=prompt, total_frames=total_frames,
                                   window_frames=window_frames, keep_frames=keep_frames, align=align,
                                   prefix=cond.prefix, prefix_dtype=lm.act_dtype)
        self.rows = cond.batch  # decoder rows: 2 with guidance ([cond; uncond]), else 1
        self.cache_len = max_prefix + self.cursor.longest_window_columns()
        self.cross_len = 0 if cond.cross is None else cond.cross.shape[1]
        self.endless = total_frames is None
        self.slot: int | None = None  # first row in the batch, while admitted
        self.kv_used = 0  # cache positions its rows hold in the current window (what moving them copies)
        self.released = False  # the consumer is gone: the scheduler drops the request
        self.last_logits: Tensor | None = None
        self.prefilled: tuple | None = None  # (input, logits, window) of its latest prefill, for takes to share
        # Seconds of the scheduler's rounds this request took part in (its prefills, the steps it advanced in): its
        # rate is steps / busy_seconds, whether or not it ran ahead of its reader meanwhile.
        self.busy_seconds = 0.0
        self._cv = threading.Condition()
        self._settled = 0  # new frames settled by the scheduler
        self._consumed = 0  # new frames handed to the consumer
        self._error: BaseException | None = None
        self._finished = False  # every frame settled (set with `_settled`, under the lock)
        self._scheduler = scheduler
        scheduler.submit(self)

    # --- the scheduler's side ---

    def wants_step(self) -> bool:
        if self.released or self.cancel.is_set() or self.cursor.done or self._error is not None:
            return False
        return not self.endless or self._settled - self._consumed < LOOKAHEAD_FRAMES

    def take(self, inp: ColumnInput, logits: Tensor) -> None:
        """This request's rows' logits [rows, K, V] for `inp`: guide, sample with its own generator, settle."""
        guided = guide(logits, self.settings.cfg)
        self.last_logits = guided[0]
        tokens = sample(guided, self.settings, self.generator)[0].cpu()
        n = self.cursor.settle(inp, tokens).shape[1]
        if n or self.cursor.done:
            with self._cv:
                self._settled += n
                self._finished = self.cursor.done
                self._cv.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cv:
            self._error = error
            self._cv.notify_all()

    # --- the consumer's side (what `StreamSession` uses of a `TokenStream`) ---

    @property
    def steps(self) -> int:
        return self.cursor.steps

    @property
    def new_frames(self) -> int:
        """Frames handed to the consumer so far (the scheduler may be ahead)."""
        return self._consumed

    @property
    def done(self) -> bool:
        c = self.cursor
        return c.end is not None and self._consumed >= c.end - c.prompt_frames

    def codes(self, start: int = 0, stop: int | None = None) -> Tensor:
        return self.cursor.codes(start, self._consumed if stop is None else stop)

    def step(self) -> Tensor:
        """The next settled frame [K, 1] (waiting for it), or [K, 0] once the stream has ended."""
        with self._cv:
            while self._consumed == self._settled and self._error is None and not self._finished:
                if self.cancel.is_set():
                    raise Cancelled()
                self._cv.wait(0.05)
            if self._error is not None:
                raise self._error
            if self.cancel.is_set():
                raise Cancelled()
            # One frame a call, as a TokenStream step settles at most one: the session then pushes the same groups
            # of frames to the codec, so the audio is bit-identical to a stream run alone.
            start = self._consumed
            self._consumed = min(self._settled, start + 1)
        self._scheduler.wake()  # an endless stream may have room to run ahead again
        return self.cursor.codes(start, self._consumed)

    def run(self, on_frames: Callable[[int], None] | None = None) -> Tensor:
        """Step to the end (requires total_frames); returns the new codes [K, total]."""
        assert not self.endless, "an endless stream has no end to run to"
        try:
            while not self.done:
                if self.step().shape[1] and on_frames is not None:
                    on_frames(self.new_frames)
            return self.codes()
        finally:
            self.release()

    def release(self) -> None:
        """The consumer is done with this stream: its rows go back to the engine."""
        self.released = True
        self._scheduler.wake()
