"""Generating codes column by column: the delay pattern, the KV cache, prompts and sliding windows.

A `StreamCursor` is one generation's bookkeeping (what to feed next, the column sampled); a `TokenStream` drives
one cursor with its own KV cache, `engine.batched_stream` drives many in one batched decoder call. Each `step()` is one decoder call that settles one column of the delayed
sequence and returns the frames that became complete (all K codebooks known). One-shot generation is the same
stream run to its end, so chunked and one-shot generation give the same codes by construction.

Windows: the model was trained on a bounded context (30 s). When a stream must go further it slides, as Meta's
extended generation does: the current window is finished (its last frames completed with special tokens in
the lower codebooks, exactly as a one-shot generation ends), then a new window re-prefills the last frames of
the music (from a point chosen by the caller, e.g. a bar line) with positions restarting at 0. The frame
history is never rewritten, so the code stream stays continuous.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from engine.errors import Cancelled
from engine.lm import MusicGenLM
from engine.pattern import DelayPattern
from engine.sampling import SamplingSettings, guide, make_generator, resolve_seed, sample
from engine.steps import decode_step, resolve_step_mode
from engine.threads import LMThreads


@dataclass
class Conditioning:
    """What the LM is conditioned on for one generation, batched [cond; uncond] when guidance is on."""

    cross: Tensor | None = None  # projected text states [B, S, D] for cross-attention (text models)
    prefix: Callable[[int], Tensor] | None = None  # melody models: window's first frame -> prefix [B, P, D]
    batch: int = 1


@dataclass
class ColumnInput:
    """What a stream feeds its next decoder call: a window's prefill (the prefix, then every column its known
    frames decide) or one column."""

    tokens: Tensor  # [K, n] columns (CPU)
    prefix: Tensor | None  # [B, P, D] conditioning prefix fed before them (a melody model's prefill), else None
    start: int  # cache position of the first entry fed (0 for a prefill)
    prefill: bool

    @property
    def kv_len(self) -> int:
        """Cache entries in use once this input is written."""
        return self.start + (0 if self.prefix is None else self.prefix.shape[1]) + self.tokens.shape[1]


class StreamCursor:
    """The bookkeeping of one generation, without the model: the delay-patterned window, its slides, the frames
    settled so far. `next_input()` says what to feed the decoder next; `settle(tokens)` takes the column it
    sampled. `TokenStream` drives one cursor with its own KV cache; `engine.batched_stream` drives many in one
    batched decoder call."""

    def __init__(
        self,
        pattern: DelayPattern,
        special: int,
        *,
        prompt: Tensor | None = None,
        total_frames: int | None = None,
        window_frames: int,
        keep_frames: int,
        align: Callable[[int], int] | None = None,
        prefix: Callable[[int], Tensor] | None = None,
        prefix_dtype: torch.dtype = torch.float32,
    ):
        """
        prompt: [K, P] codes to continue (teacher-forced, never overwritten, not returned).
        total_frames: new frames to make; None streams until the caller stops.
        window_frames: the most frames (prompt included) one window holds.
        keep_frames: frames of music re-prefilled when the window slides.
        align: maps the earliest frame a new window could start at to the frame it should start at (≥ it).
        prefix: a window's first frame -> its conditioning prefix [B, P, D] (melody models).
        """
        if keep_frames >= window_frames:
            raise ValueError("keep_frames must be smaller than window_frames")
        self.pattern, self.special = pattern, special
        self.K, self.max_delay = pattern.n_codebooks, pattern.max_delay
        self.window_frames, self.keep_frames = window_frames, keep_frames
        self.align = align or (lambda f: f)
        self.prefix_fn, self.prefix_dtype = prefix, prefix_dtype

        prompt = prompt if prompt is not None else torch.zeros(self.K, 0, dtype=torch.long)
        if prompt.shape[0] != self.K:
            raise ValueError(f"prompt has {prompt.shape[0]} codebooks, the model has {self.K}")
        # Longer prompts than a window would leave no room: keep the most recent music.
        prompt = prompt[:, max(0, prompt.shape[1] - keep_frames) :] if prompt.shape[1] >= window_frames else prompt
        self.prompt_frames = prompt.shape[1]
        self.history = torch.empty(self.K, max(64, 2 * self.prompt_frames + (total_frames or 0)), dtype=torch.long)
        self.history[:, : self.prompt_frames] = prompt
        self.n_final = self.prompt_frames  # frames of music known so far, prompt included
        self.end = None if total_frames is None else self.prompt_frames + total_frames
        self.steps = 0
        self._start_window(0)

    @property
    def done(self) -> bool:
        return self.end is not None and self.n_final >= self.end

    @property
    def new_frames(self) -> int:
        return self.n_final - self.prompt_frames

    def longest_window_columns(self) -> int:
        """Columns of the longest window this stream will use (what its KV cache must hold, prefix aside)."""
        longest = self.window_frames if self.end is None else min(self.window_frames, self.end)
        return self.pattern.columns(longest)

    def codes(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Final frames [K, n] of the music, indexed from the first new frame (prompt excluded)."""
        stop = self.new_frames if stop is None else stop
        return self.history[:, self.prompt_frames + start : self.prompt_frames + stop]

    def _start_window(self, origin: int) -> None:
        self.origin = origin
        self.win_prompt = self.n_final - origin  # frames already known inside this window
        self.win_end = origin + self.window_frames if self.end is None else min(self.end, origin + self.window_frames)
        n = self.win_end - origin
        self.seq = self.pattern.interleave(self.history[:, origin : self.n_final], self.special, self.pattern.columns(n))
        self.col = 0
        self.prefix = self.prefix_fn(origin).to(self.prefix_dtype) if self.prefix_fn is not None else None

    def _slide(self) -> None:
        earliest = max(0, self.n_final - self.keep_frames)
        origin = min(max(self.align(earliest), earliest), self.n_final - 1)
        self._start_window(origin)

    @property
    def prefill_due(self) -> bool:
        """The next input is a prefill (a new stream, or a window that must slide)."""
        return self.col == 0 or self.col == self.seq.shape[1]

    def next_input(self) -> ColumnInput:
        """What the next decoder call feeds (sliding the window first when it is full)."""
        if self.col == self.seq.shape[1]:
            self._slide()
        if self.col == 0:
            # Prefill: the prefix, the start column and every column the known frames fully decide.
            return ColumnInput(self.seq[:, : self.win_prompt + 1], self.prefix, 0, True)
        return self.pending_step()

    def pending_step(self) -> ColumnInput | None:
        """The next one-column input, without changing anything; None when a prefill is due instead."""
        if self.prefill_due:
            return None
        P = 0 if self.prefix is None else self.prefix.shape[1]
        return ColumnInput(self.seq[:, self.col - 1 : self.col], None, P + self.col - 1, False)

    def settle(self, inp: ColumnInput, tokens: Tensor) -> Tensor:
        """Take the column sampled [K] after `inp`. Returns the frames [K, n] (n = 0 or 1) it completed."""
        if inp.prefill:
            self.col = inp.tokens.shape[1]
        self.steps += 1
        col = self.col
        for k, f in enumerate(self.pattern.frame_at(col)):
            # Known frames (prompt, history) and frames outside the window keep what the column holds.
            if self.win_prompt <= f and self.origin + f < self.win_end:
                self.seq[k, col] = tokens[k]
        self.col += 1
        f = col - 1 - self.max_delay  # the window's frame whose last codebook this column settled
        if f < self.win_prompt or self.origin + f >= self.win_end:
            return self.history[:, :0]
        if self.n_final >= self.history.shape[1]:
            self.history = torch.cat([self.history, torch.empty_like(self.history)], dim=1)
        for k, d in enumerate(self.pattern.delays):
            self.history[k, self.n_final] = self.seq[k, f + 1 + d]
        self.n_final += 1
        return self.history[:, self.n_final - 1 : self.n_final]


def prefill_logits(lm: MusicGenLM, inp: ColumnInput, batch: int) -> Tensor:
    """A window's prefill on the LM's bound cache rows (`batch` of them): logits [B, K, V] of its last column."""
    h = lm.embed(inp.tokens[None].expand(batch, -1, -1).to(lm.device))
    if inp.prefix is not None:
        h = torch.cat([inp.prefix, h], dim=1)
    input_pos = torch.arange(0, h.shape[1], device=lm.device)
    return lm(h, input_pos, kv_len=h.shape[1])[:, :, -1]


class TokenStream(StreamCursor):
    """One generation on its own KV cache: each `step()` is one decoder call that settles one column."""

    def __init__(
        self,
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
        """See `StreamCursor` for the window arguments. step_mode: how decode steps run (engine.steps): "auto" (a
        graph where the device has one), "eager", ..."""
        self.lm, self.settings, self.cond = lm, settings, cond
        self.device = lm.device
        self.cancel = cancel
        self.seed = resolve_seed(settings.seed)
        self.generator = make_generator(self.seed, self.device)
        self.last_logits: Tensor | None = None  # guided logits [K, V] of the latest step (for checks)
        super().__init__(pattern, lm.cfg.special_token, prompt=prompt, total_frames=total_frames,
                         window_frames=window_frames, keep_frames=keep_frames, align=align, prefix=cond.prefix,
                         prefix_dtype=lm.act_dtype)
        # The cache holds one window, or less when the whole request is shorter (memory follows the request).
        lm.setup_caches(cond.batch, max_prefix + self.longest_window_columns())
        self.step_mode = resolve_step_mode(step_mode, self.device)
        self.decode = decode_step(lm, self.step_mode)
        # This thread steps the LM: it lends cores to side work, its count tuned on CPU (engine/threads.py)
        self.threads = LMThreads.for_device(self.device)
        if cond.cross is not None:
            lm.set_condition(cond.cross)

    @torch.inference_mode()
    def step(self) -> Tensor:
        """One decoder call. Returns the frames [K, n] (n = 0 or 1) that this call completed."""
        if self.done:
            self.threads.idle()
            return self.history[:, :0]
        if self.cancel is not None and self.cancel.is_set():
            self.threads.idle()
            raise Cancelled()
        self.threads.step()
        inp = self.next_input()
        if inp.prefill:
            logits = prefill_logits(self.lm, inp, self.cond.batch)
        else:
            # One column: the decoder step proper, where generation spends its time.
            tokens = inp.tokens[None].expand(self.cond.batch, -1, -1).to(self.device)
            logits = self.decode(tokens, torch.tensor([inp.start], device=self.device), inp.kv_len)[:, :, -1]
        guided = guide(logits, self.settings.cfg)
        self.last_logits = guided[0]
        tokens = sample(guided, self.settings, self.generator)[0].cpu()
        frames = self.settle(inp, tokens)
        if self.done:
            self.threads.idle()
        return frames

    def release(self) -> None:
        """The consumer is done with this stream, whether or not it ran to its end (an error, a cancellation):
        the thread that stepped it gets its thread budget back."""
        self.threads.idle()

    def run(self, on_frames: Callable[[int], None] | None = None) -> Tensor:
        """Step to the end (requires total_frames); returns the new codes [K, total]."""
        assert self.end is not None, "an endless stream has no end to run to"
        while not self.done:
            if self.step().shape[1] and on_frames is not None:
                on_frames(self.new_frames)
        return self.codes()
